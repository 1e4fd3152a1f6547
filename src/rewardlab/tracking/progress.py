"""A terminal progress bar with ETA and the latest metrics, fed by a trainer's callbacks."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Shown in this order when present; the full set is in metrics.jsonl.
LIVE_KEYS = ("reward", "loss", "eval/accuracy", "kl", "entropy", "completion_length")


def _short(key: str) -> str:
    return key.removeprefix("eval/").replace("completion_length", "len")


class ProgressView:
    """``with ProgressView("GRPO") as view: train(..., on_start=view.start, on_step=view.step)``."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.label = label
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[live]}"),
            console=self.console,
        )
        self._task: TaskID | None = None
        self._latest: dict[str, float] = {}

    def __enter__(self) -> Self:
        return self  # the bar appears at start(): a run that fails to load shows none

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._progress.stop()

    def start(self, done: int, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=total, completed=done, live="")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self._latest |= {k: v for k, v in metrics.items() if k in LIVE_KEYS}
        live = "  ".join(f"{_short(k)}={self._latest[k]:.3g}" for k in LIVE_KEYS if k in self._latest)
        if self._task is not None:
            self._progress.update(self._task, completed=step, live=live)
