"""User-facing errors: each carries one message that says what is wrong and what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RewardlabError(Exception):
    """A mistake in the user's input (config, data, paths) with a message meant for them."""


class ConfigError(RewardlabError):
    """A bad key or value in a run config."""


class DataError(RewardlabError):
    """A bad file or row in a dataset."""


class RegistryError(RewardlabError):
    """An unknown component name or bad parameters for a component."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest valid choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class StopRequested(Exception):
    """A run stopped on SIGINT / SIGTERM after writing a checkpoint at ``step`` (not a user
    mistake: the CLI exits with 130, as for an interrupt)."""

    def __init__(self, run_dir: object, step: int) -> None:
        super().__init__(f"stopped at step {step}; checkpoint written; resume with --resume {run_dir}")
        self.run_dir = run_dir
        self.step = step
