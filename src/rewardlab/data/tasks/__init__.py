"""Built-in synthetic tasks with verifiable answers: arithmetic, reverse, sort."""

from __future__ import annotations

from typing import Any

from rewardlab.data.tasks.base import Problem, Task
from rewardlab.data.tasks.builtin import ArithmeticTask, ReverseTask, SortTask
from rewardlab.errors import ConfigError, did_you_mean

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "reverse": ReverseTask,
    "sort": SortTask,
}


def make_task(name: str, args: dict[str, Any]) -> Task:
    """Build the task ``name`` with ``args`` (from ``data.task_args``)."""
    if name not in TASKS:
        raise ConfigError(
            f"data.task: unknown task '{name}'{did_you_mean(name, TASKS)}; "
            f"choose one of: {', '.join(sorted(TASKS))}"
        )
    try:
        return TASKS[name](**args)
    except TypeError as e:
        raise ConfigError(f"data.task_args: {e}") from None
    except ValueError as e:
        raise ConfigError(f"data.task_args: {e}") from None


__all__ = ["TASKS", "Problem", "Task", "make_task"]
