"""Preference data for offline preference optimization, from a dataset or built from a task.

Three formats, each standard (strings) or conversational (lists of messages), as TRL reads them:

* pairwise (DPO and friends): ``prompt`` / ``chosen`` / ``rejected`` -> :class:`Pair`;
* unpaired (KTO): ``prompt`` / ``completion`` / ``label`` (true for a desirable completion)
  -> :class:`Unpaired`;
* listwise (LiPO): ``prompt`` / ``completions`` (two or more) / ``scores`` (one finite number
  per completion, higher is better) -> :class:`Ranked`.

A file's format is detected from its columns (:func:`detect_preference_format`).

A task pair's ``chosen`` is the problem's right answer and its ``rejected`` a wrong one (the
answer of another problem of the task), so the task's verifier is a known gold reward: a
synthetic preference set on which a method's effect can be measured exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rewardlab.config import DataConfig
from rewardlab.data.datasets import (
    PREFERENCE_FIELDS,
    Kind,
    load_rows,
    preference_fields_text,
    render_pair_prompt,
    render_pair_side,
    row_columns,
)
from rewardlab.data.prompts import context_length
from rewardlab.data.tasks import Task, make_task
from rewardlab.errors import ConfigError, did_you_mean

PreferenceFormat = Literal["pairwise", "unpaired", "listwise"]

# The load_rows kind of each format, and what the formats are called in messages.
FORMAT_KINDS: dict[PreferenceFormat, Kind] = {
    "pairwise": "pair",
    "unpaired": "unpaired",
    "listwise": "listwise",
}
_FORMAT_NAMES = {
    "pairwise": "pairwise",
    "unpaired": "unpaired (KTO)",
    "listwise": "listwise (LiPO)",
}


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Unpaired:
    """One completion judged on its own: ``label`` is True when it is desirable."""

    prompt: str
    completion: str
    label: bool


@dataclass(frozen=True)
class Ranked:
    """Completions of one prompt with a score each (higher is better; ties allowed)."""

    prompt: str
    completions: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass
class PreferenceData:
    """Preference examples of one format and how many bad dataset rows were skipped."""

    format: PreferenceFormat
    examples: list[Pair] | list[Unpaired] | list[Ranked]
    skipped: int


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
        return _task_heldout_pairs(data, seed)
    path, split, split_key = _heldout_source(data)
    loaded = load_rows(
        path, kind="pair", skip_bad_rows=data.skip_bad_rows, split=split, split_key=split_key
    )
    return [_rendered(row, tokenizer) for row in loaded.rows[: data.heldout_size]]


def detect_preference_format(
    path: str | Path, split: str = "train", *, split_key: str = "data.split"
) -> PreferenceFormat:
    """The preference format of a dataset, from its rows' columns: ``chosen`` and ``rejected``
    make it pairwise, ``completion`` and ``label`` unpaired, ``completions`` and ``scores``
    listwise.

    Rows that have the columns of no format are left for :func:`load_rows` to report as bad
    rows (so ``data.skip_bad_rows`` can skip them).

    Raises:
        ConfigError: no row has the columns of any format, or rows of different formats (or
            one row with the columns of two) are mixed in the file.
        DataError: the file itself cannot be read (see :func:`load_rows`).
    """
    label, columns = row_columns(path, split=split, split_key=split_key)
    first_row: dict[PreferenceFormat, str] = {}  # format -> where its first row is
    for where, present in columns:
        for fmt, kind in FORMAT_KINDS.items():
            if set(PREFERENCE_FIELDS[kind][1:]) <= present:
                first_row.setdefault(fmt, where)
    if len(first_row) == 1:
        return next(iter(first_row))
    if not first_row:
        found = sorted(set().union(*(present for _, present in columns)))
        shown = ", ".join(f"'{c}'" for c in found) or "(none)"
        known = sorted({c for names in PREFERENCE_FIELDS.values() for c in names})
        guess = next((g for g in (_misspelled(c, known) for c in found) if g), "")
        raise ConfigError(
            f"{label} does not look like preference data: no row has the columns of a known "
            f"format ({_needs()}); its columns are {shown}{guess}."
        )
    formats_at: dict[str, list[str]] = {}  # where -> the formats first seen there
    for fmt, where in first_row.items():
        formats_at.setdefault(where, []).append(_FORMAT_NAMES[fmt])
    found = " and ".join(
        f"{where} is {' and '.join(names)}"
        for where, names in sorted(formats_at.items(), key=_by_row)
    )
    raise ConfigError(
        f"{label} mixes preference formats: {found}; use one format for every row of a file "
        f"({_needs()})."
    )


def load_preference_data(data: DataConfig, tokenizer: Any, seed: int) -> PreferenceData:
    """The training examples: pairs built from a task, or a file's rows in its format."""
    if data.task is not None:
        pairs, skipped = preference_pairs(data, tokenizer, seed)
        return PreferenceData("pairwise", pairs, skipped)
    assert data.path is not None
    return _load_file(data, data.path, data.split, "data.split", tokenizer)


def heldout_examples(
    data: DataConfig, tokenizer: Any, seed: int
) -> list[Pair] | list[Unpaired] | list[Ranked]:
    """Examples never trained on, chosen as :func:`heldout_pairs` chooses them: a task's
    held-out problems (as pairs), the eval file, or (a dataset without one) the first training
    rows; a file's rows come in its detected format (bad rows skipped as ``data.skip_bad_rows``
    says).

    Raises:
        ConfigError: the eval file's format is not the training file's (or see
            :func:`detect_preference_format`).
    """
    if data.task is not None:
        return _task_heldout_pairs(data, seed)
    path, split, split_key = _heldout_source(data)
    held = _load_file(data, path, split, split_key, tokenizer, limit=data.heldout_size)
    if data.eval_path is not None:
        assert data.path is not None
        trained = detect_preference_format(data.path, data.split)
        if trained != held.format:
            raise ConfigError(
                f"data.eval_path {data.eval_path} holds {_FORMAT_NAMES[held.format]} data but "
                f"data.path {data.path} holds {_FORMAT_NAMES[trained]} data; use one format "
                "for both."
            )
    return held.examples


def task_pair(task: Task, index: int, seed: int) -> Pair:
    """Training pair ``index`` of a task (its own ``pref`` stream of problems)."""
    problem = task.train_problem(index, seed=seed, stream="pref")
    return _pair_of(task, problem.prompt, problem.answer, index, seed)


def task_ranked(task: Task, index: int, seed: int, k: int) -> Ranked:
    """Listwise example ``index`` of a task: the problem's right answer (score 1) and ``k - 1``
    distinct wrong ones (score 0), in a shuffled order (the same for the same arguments).

    The problem is the one of :func:`task_pair`; the wrong answers are other problems'
    answers (``pref-wrong`` stream, indices ``index * (k - 1)`` on, so no two examples share
    one), made different from the right answer and from each other as in :func:`task_pair`.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2 (one right and one wrong answer), got {k}")
    problem = task.train_problem(index, seed=seed, stream="pref")
    taken = [problem.answer]
    for j in range(k - 1):
        other = task.train_problem(index * (k - 1) + j, seed=seed, stream="pref-wrong").answer
        taken.append(_made_distinct(other, taken))
    order = list(range(k))
    random.Random(f"{task.name}/pref-order/{seed}/{index}").shuffle(order)
    return Ranked(
        problem.prompt,
        tuple(taken[i] for i in order),
        tuple(1.0 if i == 0 else 0.0 for i in order),
    )


def _pair_of(task: Task, prompt: str, answer: str, index: int, seed: int) -> Pair:
    """Right answer versus the answer of another problem (made different if it happens to
    be the same), so rejected is always wrong and looks like an answer."""
    other = task.train_problem(index, seed=seed, stream="pref-wrong").answer
    return Pair(prompt, answer, _made_distinct(other, [answer]))


def _made_distinct(answer: str, taken: list[str]) -> str:
    """``answer``, with its last character repeated until it is none of ``taken``."""
    while answer in taken:
        answer += answer[-1]
    return answer


def _task_heldout_pairs(data: DataConfig, seed: int) -> list[Pair]:
    assert data.task is not None
    task = make_task(data.task, data.task_args)
    problems = task.heldout(data.heldout_size, seed=seed)
    return [_pair_of(task, p.prompt, p.answer, i, seed) for i, p in enumerate(problems)]


def _heldout_source(data: DataConfig) -> tuple[str, str, str]:
    """The held-out file, its split and the key that chose it: the eval file if there is
    one, else the training file."""
    if data.eval_path is not None:
        return data.eval_path, data.eval_split or data.split, "data.eval_split"
    assert data.path is not None
    return data.path, data.split, "data.split"


def _load_file(
    data: DataConfig,
    path: str,
    split: str,
    split_key: str,
    tokenizer: Any,
    limit: int | None = None,
) -> PreferenceData:
    """A file's rows, checked and rendered in its detected format."""
    fmt = detect_preference_format(path, split, split_key=split_key)
    loaded = load_rows(
        path,
        kind=FORMAT_KINDS[fmt],
        skip_bad_rows=data.skip_bad_rows,
        split=split,
        split_key=split_key,
        row_check=_sides_fit(tokenizer, fmt),
    )
    rows = loaded.rows if limit is None else loaded.rows[:limit]
    examples: list[Pair] | list[Unpaired] | list[Ranked]
    if fmt == "pairwise":
        examples = [_rendered(row, tokenizer) for row in rows]
    elif fmt == "unpaired":
        examples = [_rendered_unpaired(row, tokenizer) for row in rows]
    else:
        examples = [_rendered_ranked(row, tokenizer) for row in rows]
    return PreferenceData(fmt, examples, len(loaded.skipped))


def _sides_fit(tokenizer: Any, fmt: PreferenceFormat) -> Callable[[dict[str, Any]], str | None] | None:
    """A row check: the prompt followed by each of the row's completions and EOS fits the
    model's context, as the trainer's batches put them (longer rows would be trained on past
    the positions the model was trained for, silently)."""
    limit = context_length(tokenizer)
    if limit is None:
        return None
    render = {"pairwise": _rendered, "unpaired": _rendered_unpaired, "listwise": _rendered_ranked}[fmt]

    def check(row: dict[str, Any]) -> str | None:
        example = render(row, tokenizer)
        prompt = len(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
        for name, text in _named_sides(example):
            size = prompt + len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
            if size > limit:
                return (
                    f"the prompt and {name} are {size} tokens long with EOS, but the model's context "
                    f"holds {limit} tokens; shorten them, or use a model with a longer context"
                )
        return None

    return check


def _named_sides(example: Pair | Unpaired | Ranked) -> list[tuple[str, str]]:
    """Each completion of a rendered row with its name in messages ('chosen', 'completions[2]')."""
    if isinstance(example, Pair):
        return [("'chosen'", example.chosen), ("'rejected'", example.rejected)]
    if isinstance(example, Unpaired):
        return [("'completion'", example.completion)]
    return [(f"'completions[{i}]'", text) for i, text in enumerate(example.completions)]


def _needs() -> str:
    """What columns each format needs, for messages."""
    return "; ".join(
        f"{_FORMAT_NAMES[fmt]} rows need {preference_fields_text(kind)}"
        for fmt, kind in FORMAT_KINDS.items()
    )


def _misspelled(column: str, known: list[str]) -> str:
    """' (for 'x', did you mean 'y'?)' when an unknown column is close to a known one."""
    if column in known:
        return ""
    hint = did_you_mean(column, known)
    return f" (for '{column}', {hint[2:]}" if hint else ""


def _by_row(item: tuple[str, Any]) -> tuple[str, int]:
    """Sort ("line 12", ...) items by their line or row number."""
    kind, number = item[0].split()
    return kind, int(number)


def _rendered(row: dict[str, Any], tokenizer: Any) -> Pair:
    return Pair(
        render_pair_prompt(row, tokenizer),
        render_pair_side(row["chosen"]),
        render_pair_side(row["rejected"]),
    )


def _rendered_unpaired(row: dict[str, Any], tokenizer: Any) -> Unpaired:
    return Unpaired(
        render_pair_prompt(row, tokenizer), render_pair_side(row["completion"]), bool(row["label"])
    )


def _rendered_ranked(row: dict[str, Any], tokenizer: Any) -> Ranked:
    return Ranked(
        render_pair_prompt(row, tokenizer),
        tuple(render_pair_side(c) for c in row["completions"]),
        tuple(float(s) for s in row["scores"]),
    )
