"""Preference pairs for offline preference optimization: from a dataset (``prompt`` /
``chosen`` / ``rejected``, standard or conversational) or built from a task.

A task pair's ``chosen`` is the problem's right answer and its ``rejected`` a wrong one (the
answer of another problem of the task), so the task's verifier is a known gold reward: a
synthetic preference set on which a method's effect can be measured exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rewardlab.config import DataConfig
from rewardlab.data.datasets import load_rows, render_pair_prompt, render_pair_side
from rewardlab.data.tasks import Task, make_task
from rewardlab.errors import ConfigError


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def preference_pairs(data: DataConfig, tokenizer: Any, seed: int) -> tuple[list[Pair], int]:
    """The training pairs and how many bad dataset rows were skipped."""
    if data.task is not None:
        if data.num_examples is None:
            raise ConfigError("data.num_examples: preference pairs from a task need the set's size")
        task = make_task(data.task, data.task_args)
        return [task_pair(task, i, seed) for i in range(data.num_examples)], 0
    assert data.path is not None
    loaded = load_rows(data.path, kind="pair", skip_bad_rows=data.skip_bad_rows, split=data.split)
    return [_rendered(row, tokenizer) for row in loaded.rows], len(loaded.skipped)


def heldout_pairs(data: DataConfig, tokenizer: Any, seed: int) -> list[Pair]:
    """Pairs never trained on, for ranking accuracy: a task's held-out problems, the eval file,
    or (a dataset without one) the first training rows."""
    if data.task is not None:
        task = make_task(data.task, data.task_args)
        problems = task.heldout(data.heldout_size, seed=seed)
        return [_pair_of(task, p.prompt, p.answer, i, seed) for i, p in enumerate(problems)]
    path = data.eval_path or data.path
    assert path is not None
    split = (data.eval_split or data.split) if data.eval_path else data.split
    loaded = load_rows(path, kind="pair", skip_bad_rows=data.skip_bad_rows, split=split)
    return [_rendered(row, tokenizer) for row in loaded.rows[: data.heldout_size]]


def task_pair(task: Task, index: int, seed: int) -> Pair:
    """Training pair ``index`` of a task (its own ``pref`` stream of problems)."""
    problem = task.train_problem(index, seed=seed, stream="pref")
    return _pair_of(task, problem.prompt, problem.answer, index, seed)


def _pair_of(task: Task, prompt: str, answer: str, index: int, seed: int) -> Pair:
    """Right answer versus the answer of another problem (made different if it happens to
    be the same), so rejected is always wrong and looks like an answer."""
    other = task.train_problem(index, seed=seed, stream="pref-wrong").answer
    wrong = other if other != answer else answer + answer[-1]
    return Pair(prompt, answer, wrong)


def _rendered(row: dict[str, Any], tokenizer: Any) -> Pair:
    return Pair(
        render_pair_prompt(row, tokenizer),
        render_pair_side(row["chosen"]),
        render_pair_side(row["rejected"]),
    )
