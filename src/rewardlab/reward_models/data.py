"""Pairs for a reward model: a task's pairs, or a pairwise file's rows with their margin.

The rows are read and checked by :func:`rewardlab.data.datasets.load_rows` (kind ``pair``);
this module adds the optional margin column, which the shared :class:`Pair` does not carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rewardlab.config import DataConfig
from rewardlab.data.datasets import SKIP_HINT, load_rows, render_pair_prompt, render_pair_side
from rewardlab.data.preferences import heldout_pairs, preference_pairs
from rewardlab.errors import ConfigError, DataError


@dataclass(frozen=True)
class RewardPair:
    """A preference pair; ``margin`` is the row's margin column (None when it has none).
    ``smoothing`` (label smoothing eps) and ``strength_margin`` (an adaptive margin added to
    the loss's margin) are set by :func:`rewardlab.reward_models.strength.apply_strength`."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    smoothing: float = 0.0
    strength_margin: float = 0.0


@dataclass
class RewardData:
    pairs: list[RewardPair]
    skipped: int = 0


def training_pairs(
    data: DataConfig, tokenizer: Any, seed: int, margin_column: str, *, require_margin: bool
) -> RewardData:
    """The training pairs. With ``require_margin`` every row must have a finite number in
    ``margin_column``; without it a margin is still read where present (for evaluation)."""
    if data.task is not None:
        if require_margin:
            raise ConfigError(
                "loss.use_margin: pairs built from a task have no margin column; set data.path "
                f"to a file with a '{margin_column}' column, or turn use_margin off"
            )
        pairs, _ = preference_pairs(data, tokenizer, seed)
        return RewardData([RewardPair(p.prompt, p.chosen, p.rejected) for p in pairs])
    assert data.path is not None
    return read_pairs(
        data.path, tokenizer, margin_column, require_margin=require_margin,
        skip_bad_rows=data.skip_bad_rows, split=data.split,
    )


def heldout_reward_pairs(data: DataConfig, tokenizer: Any, seed: int, margin_column: str) -> list[RewardPair]:
    """Pairs never trained on: a task's held-out problems, the eval file, or (a file without
    one) its first ``heldout_size`` rows, as :func:`rewardlab.data.preferences.heldout_pairs`."""
    if data.task is not None:
        return [RewardPair(p.prompt, p.chosen, p.rejected) for p in heldout_pairs(data, tokenizer, seed)]
    path = data.eval_path or data.path
    assert path is not None
    split = (data.eval_split or data.split) if data.eval_path else data.split
    split_key = "data.eval_split" if data.eval_path else "data.split"
    loaded = read_pairs(
        path, tokenizer, margin_column, require_margin=False,
        skip_bad_rows=data.skip_bad_rows, split=split, split_key=split_key,
    )
    return loaded.pairs[: data.heldout_size]


def read_pairs(
    path: str,
    tokenizer: Any,
    margin_column: str = "margin",
    *,
    require_margin: bool = False,
    skip_bad_rows: bool = False,
    split: str = "train",
    split_key: str = "data.split",
) -> RewardData:
    """A pairwise file's rows as :class:`RewardPair`; a margin that is present must be a
    finite number (a bad one is a bad row, reported or skipped as ``skip_bad_rows`` says)."""
    loaded = load_rows(path, kind="pair", skip_bad_rows=skip_bad_rows, split=split, split_key=split_key)
    pairs: list[RewardPair] = []
    skipped = len(loaded.skipped)
    for number, row in enumerate(loaded.rows, start=1):
        raw = row.get(margin_column)
        margin = _as_margin(raw)
        problem = None
        if raw is None and require_margin:
            problem = f"no '{margin_column}' (loss.use_margin is on: every pair needs one)"
        elif raw is not None and margin is None:
            problem = f"'{margin_column}' must be a finite number, got {raw!r}"
        if problem is not None:
            # load_rows has dropped any bad rows before this one, so the count is of good rows.
            if not skip_bad_rows:
                raise DataError(f"{path}, pair {number}: {problem}; {SKIP_HINT}.")
            skipped += 1
            continue
        pairs.append(RewardPair(
            render_pair_prompt(row, tokenizer),
            render_pair_side(row["chosen"]),
            render_pair_side(row["rejected"]),
            margin,
        ))
    if not pairs:
        raise DataError(f"{path}: no usable pairs (every row's '{margin_column}' is missing or bad)")
    return RewardData(pairs, skipped)


def _as_margin(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not one (bools are not margins)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def margins_of(pairs: list[RewardPair]) -> list[float] | None:
    """Every pair's margin, or None unless all of them have one."""
    found = [p.margin for p in pairs]
    return None if any(m is None for m in found) else [float(m) for m in found if m is not None]
