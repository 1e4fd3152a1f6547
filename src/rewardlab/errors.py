"""User-facing errors: each carries one message that says what is wrong and what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class RewardlabError(Exception):
    """A mistake in the user's input (config, data, paths) with a message meant for them."""


class ConfigError(RewardlabError):
    """A bad key or value in a run config."""


class DataError(RewardlabError):
    """A bad file or row in a dataset."""


class RegistryError(RewardlabError):
    """An unknown component name or bad parameters for a component."""


# errno values that mean "the storage is full", with the words the message uses for them.
_STORAGE_FULL = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EFBIG: "the file grew past the largest size allowed (a file-size limit such as `ulimit -f`)",
    errno.EDQUOT: "the disk quota is used up (the disk is full for this user)",
}


class WriteFailed(RewardlabError):
    """A run could not write one of its files (disk full, quota, file-size limit, I/O error).

    The message names the file, says why (in words, plus the OS's own text) and ends with
    ``then`` (what is intact and how to go on)."""

    def __init__(self, what: str, path: object, err: OSError, then: str) -> None:
        reason = _STORAGE_FULL.get(err.errno or 0) or f"{err.strerror or err}"
        code = errno.errorcode.get(err.errno or 0)
        super().__init__(
            f"writing {what} failed: {path}: {reason}" + (f" [{code}]" if code else "") + f"; {then}"
        )
        self.path = path
        self.errno = err.errno


def os_error_in(err: Exception) -> OSError | None:
    """The ``OSError`` behind a library's error that reports one only in its text, as
    safetensors' ``SafetensorError`` does ("... I/O error: ... (os error 28)"); else None."""
    found = re.search(r"os error (\d+)", str(err))
    if found is None or type(err).__name__ != "SafetensorError":
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number))


@contextmanager
def writing(what: str, path: object, then: str) -> Iterator[None]:
    """Turn a failed write inside (disk full, quota, I/O error: an ``OSError``, or one that a
    library reports in its own error's text) into one ``WriteFailed`` naming ``what`` and
    ``path``; the caller cleans up its partial files."""
    try:
        yield
    except OSError as err:
        raise WriteFailed(what, path, err, then) from err
    except Exception as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise WriteFailed(what, path, cause, then) from err


@contextmanager
def writing_folder(what: str, folder: Path, then: str) -> Iterator[Path]:
    """``writing`` for a folder that is written as ``<folder>.tmp`` and renamed into place
    (yielded): a failed write also removes the partial ``.tmp`` folder."""
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        with writing(what, tmp, then):
            yield tmp
    except WriteFailed:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def final_model_hint(run_dir: Path) -> str:
    """What a failed write of a run's ``final/`` leaves, and how to get the model."""
    return f"the run's checkpoints are intact; once there is room, resume with --resume {run_dir} to write it again"


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


class LearnerLost(Exception):
    """A data-parallel learner (a Ray actor) died during a run; the trainer resumes the run in
    ``run_dir`` from its last checkpoint."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir
