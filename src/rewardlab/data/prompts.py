"""Where a run's prompts come from: a built-in task or a dataset file, as plain row dicts.

A row is ``{"prompt": str, **columns}`` once rendered; the extra columns (``answer``, ...)
reach the reward functions. Which rows a step sees is a pure function of (seed, step), so a
resumed run needs to remember only the step it stopped at.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewardlab.config import DataConfig
from rewardlab.data.datasets import load_rows, render_completion, render_prompt
from rewardlab.data.tasks import Task, make_task
from rewardlab.errors import ConfigError

Row = dict[str, Any]


@dataclass
class PromptSource:
    """Training and held-out rows of one run.

    With a task, training rows are drawn fresh from its generator (stream ``rl``), so RL sees
    prompts SFT never saw. With a dataset, rows are visited in a seeded shuffle, epoch after
    epoch.
    """

    task: Task | None
    rows: list[Row]
    heldout_rows: list[Row]
    seed: int
    skipped: int = 0

    def train_rows(self, step: int, n: int) -> list[Row]:
        """The ``n`` training rows of ``step`` (when every step takes exactly ``n``)."""
        return self.rows_from(step * n, n)

    def rows_from(self, start: int, n: int) -> list[Row]:
        """Training rows ``start .. start + n - 1`` of the run's stream (a step that refills
        its batch takes more than one block, so the trainer keeps a cursor)."""
        return [self._train_row(start + i) for i in range(n)]

    def _train_row(self, index: int) -> Row:
        if self.task is not None:
            return self.task.train_problem(index, seed=self.seed, stream="rl").row()
        epoch, position = divmod(index, len(self.rows))
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}/epoch/{epoch}").shuffle(order)
        return self.rows[order[position]]


def prompt_source(
    data: DataConfig, tokenizer: Any, seed: int, required_columns: list[str] | None = None
) -> PromptSource:
    """Build the rows of a run from ``data`` (a task, or dataset files)."""
    fits = _prompt_fits(tokenizer)
    if data.task is not None:
        task = make_task(data.task, data.task_args)
        if data.eval_path is not None:  # the task trains, your file is the held-out set
            heldout, skipped = _eval_rows(data, tokenizer, fits, required_columns or [])
            return PromptSource(task, [], heldout, seed, skipped)
        heldout = [p.row() for p in task.heldout(data.heldout_size, seed=seed)]
        return PromptSource(task, [], heldout, seed)
    assert data.path is not None  # the config guarantees one source
    loaded = load_rows(
        data.path,
        kind="prompt",
        required_columns=required_columns or [],
        skip_bad_rows=data.skip_bad_rows,
        split=data.split,
        row_check=fits,
    )
    rows = [_rendered(row, tokenizer) for row in loaded.rows]
    skipped = len(loaded.skipped)
    if data.eval_path is not None:
        heldout, eval_skipped = _eval_rows(data, tokenizer, fits, required_columns or [])
        skipped += eval_skipped
    else:
        heldout = rows[: min(data.heldout_size, len(rows))]
    return PromptSource(None, rows, heldout, seed, skipped)


def _eval_rows(
    data: DataConfig, tokenizer: Any, fits: Callable[[Row], str | None] | None, required_columns: list[str]
) -> tuple[list[Row], int]:
    """The first ``heldout_size`` rows of ``data.eval_path`` and how many bad rows were skipped."""
    assert data.eval_path is not None
    held = load_rows(
        data.eval_path,
        kind="prompt",
        required_columns=required_columns,
        skip_bad_rows=data.skip_bad_rows,
        split=data.eval_split or data.split,
        split_key="data.eval_split" if data.eval_split else "data.split",
        row_check=fits,
    )
    return [_rendered(row, tokenizer) for row in held.rows[: data.heldout_size]], len(held.skipped)


def _rendered(row: Row, tokenizer: Any) -> Row:
    """The row with ``prompt`` as text (chat rows go through the chat template)."""
    out = {k: v for k, v in row.items() if k != "messages"}
    out["prompt"] = render_prompt(row, tokenizer)
    return out


def demonstrations(data: DataConfig, tokenizer: Any, seed: int) -> tuple[list[Row], int]:
    """SFT pairs ``{"prompt", "completion"}`` and how many bad rows were skipped.

    From a task: ``data.num_examples`` problems of its ``sft`` stream, a fixed demo set. From
    a dataset: every row.
    """
    if data.task is not None:
        if data.num_examples is None:
            raise ConfigError("data.num_examples: SFT on a task needs the size of the demo set")
        task = make_task(data.task, data.task_args)
        rows = [
            task.train_problem(i, seed=seed, stream="sft").demonstration() for i in range(data.num_examples)
        ]
        return rows, 0
    assert data.path is not None
    loaded = load_rows(
        data.path, kind="sft", skip_bad_rows=data.skip_bad_rows, split=data.split, row_check=_pair_fits(tokenizer)
    )
    pairs = [
        {"prompt": render_prompt(row, tokenizer), "completion": render_completion(row, tokenizer)}
        for row in loaded.rows
    ]
    return pairs, len(loaded.skipped)


def context_length(tokenizer: Any) -> int | None:
    """The model's context in tokens, as ``load_policy`` sets it on the tokenizer
    (``model_max_length``); None when unknown (transformers' placeholder is ~1e30)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**9 else None


def _prompt_fits(tokenizer: Any) -> Callable[[Row], str | None] | None:
    """A row check: the rendered prompt leaves room in the context for a completion."""
    limit = context_length(tokenizer)
    if limit is None:
        return None

    def check(row: Row) -> str | None:
        size = len(tokenizer(render_prompt(row, tokenizer), add_special_tokens=True)["input_ids"])
        if size < limit:
            return None
        return (
            f"the prompt is {size} tokens long, but the model's context holds {limit} tokens, "
            "prompt and completion together; shorten the prompt, or use a model with a longer context"
        )

    return check


def _pair_fits(tokenizer: Any) -> Callable[[Row], str | None] | None:
    """A row check for SFT: prompt, completion and EOS fit the context (as ``encode_pair``)."""
    limit = context_length(tokenizer)
    if limit is None:
        return None

    def check(row: Row) -> str | None:
        prompt = tokenizer(render_prompt(row, tokenizer), add_special_tokens=True)["input_ids"]
        completion = tokenizer(render_completion(row, tokenizer), add_special_tokens=False)["input_ids"]
        size = len(prompt) + len(completion) + 1
        if size <= limit:
            return None
        return (
            f"the prompt and completion are {size} tokens long with EOS, but the model's context "
            f"holds {limit} tokens; shorten them, or use a model with a longer context"
        )

    return check
