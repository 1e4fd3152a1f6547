"""Call each reward source on a batch and check what it returns."""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch

from rewardlab.errors import RewardlabError
from rewardlab.rewards.loading import RewardSource

_CONTRACT = "a reward function must return a float or None per completion"


def score_completions(
    sources: Sequence[RewardSource],
    prompts: list[str],
    completions: list[str],
    columns: Mapping[str, list[Any]],
) -> dict[str, torch.Tensor]:
    """Score a batch with every source: name -> float32 tensor ``[B]``, NaN where n/a.

    Each fn is called as ``fn(prompts, completions, **columns)``. A bad return value is a
    RewardlabError naming the reward and the row; an exception raised inside a fn propagates
    with its own traceback plus a note naming the reward.
    """
    batch = len(completions)
    _check_lengths(batch, prompts, columns)
    scores: dict[str, torch.Tensor] = {}
    for source in sources:
        _check_args_vs_columns(source, columns)
        try:
            returned = source.fn(prompts, completions, **columns)
        except Exception as err:
            err.add_note(f"raised while scoring reward '{source.name}'")
            raise
        values = _validate(source.name, returned, batch)
        scores[source.name] = torch.tensor(values, dtype=torch.float32)
    return scores


def _check_lengths(batch: int, prompts: list[str], columns: Mapping[str, list[Any]]) -> None:
    # The trainer builds these lists; a mismatch is its bug, not the user's.
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for {batch} completions")
    reserved = {"prompts", "completions"} & set(columns)
    if reserved:
        raise ValueError(f"columns may not be named {sorted(reserved)}: they are positional")
    for name, values in columns.items():
        if len(values) != batch:
            raise ValueError(f"column '{name}' has {len(values)} values for {batch} completions")


def _check_args_vs_columns(source: RewardSource, columns: Mapping[str, list[Any]]) -> None:
    # functools.partial lets call-time keywords win, so a column would silently replace the arg.
    bound = source.fn.keywords if isinstance(source.fn, partial) else {}
    clash = sorted(set(bound) & set(columns))
    if clash:
        raise RewardlabError(
            f"reward '{source.name}': arg '{clash[0]}' has the same name as a dataset column, "
            "which would replace it; rename the arg (in the function and in rewards[].args)"
        )


def _validate(name: str, returned: Any, batch: int) -> list[float]:
    """The scores as floats with NaN for None, or a RewardlabError saying what is wrong."""
    if hasattr(returned, "tolist") and not isinstance(returned, (str, bytes)):
        returned = returned.tolist()  # a tensor or ndarray: compare as plain Python numbers
    if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
        raise RewardlabError(
            f"reward '{name}' returned {_show(returned)} ({type(returned).__name__}); "
            f"{_CONTRACT}, as a list of {batch}"
        )
    if len(returned) != batch:
        raise RewardlabError(
            f"reward '{name}' returned {len(returned)} scores for {batch} completions; "
            f"{_CONTRACT}"
        )
    return [_one_score(name, row, value) for row, value in enumerate(returned)]


def _one_score(name: str, row: int, value: Any) -> float:
    if value is None:
        return math.nan
    # bool is an int subclass, but True is almost surely a forgotten float(...) or a bug.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        as_float = float(value)
        if math.isfinite(as_float):
            return as_float
        raise RewardlabError(
            f"reward '{name}' returned {as_float} for completion {row}; {_CONTRACT} "
            "(finite; return None, not NaN, when the reward does not apply)"
        )
    raise RewardlabError(
        f"reward '{name}' returned {_show(value)} for completion {row}; {_CONTRACT}"
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def drain_failure_counts(sources: Sequence[RewardSource]) -> dict[str, float]:
    """``failures/<name>/<reason>`` counts since the last call, from rewards that count
    the rows they could not really score (math_verify: timeouts, unparsable references,
    completions without an answer); the counters restart at zero."""
    out: dict[str, float] = {}
    for source in sources:
        failures = getattr(source.fn, "failures", None)
        if isinstance(failures, Counter):
            out |= {f"failures/{source.name}/{k}": float(v) for k, v in failures.items()}
            failures.clear()
    return out


def score_rows(
    sources: Sequence[RewardSource],
    rows: Sequence[Mapping[str, Any]],
    completions: list[str],
    repeat: int,
) -> dict[str, torch.Tensor]:
    """Score ``repeat`` consecutive completions per row (``{"prompt", **columns}``): each
    row's prompt and columns are repeated to line up with its completions."""
    prompts = [row["prompt"] for row in rows for _ in range(repeat)]
    names = {k for row in rows for k in row if k != "prompt"}
    columns = {k: [row.get(k) for row in rows for _ in range(repeat)] for k in sorted(names)}
    return score_completions(sources, prompts, completions, columns)
