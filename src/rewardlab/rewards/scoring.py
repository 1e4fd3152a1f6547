"""Call each reward source on a batch and check what it returns."""

from __future__ import annotations

import math
import numbers
import threading
import traceback
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

    Each fn is called as ``fn(prompts, completions, **columns)``. A return value of the wrong
    shape or type (or count) is a RewardlabError naming the reward. A fn that raises, or a
    NaN / inf score, is a RewardlabError naming the reward and the completion (found by
    scoring the rows one at a time), unless the source's ``on_error`` is ``fallback``: then
    those rows score ``fallback`` and are counted in ``source.failures`` (``raised`` /
    ``not_finite``). With a ``timeout``, a call that has not returned after that many seconds
    is abandoned (left running in its thread) and follows ``on_error`` the same way: an
    error naming the reward and the batch, or every row of the call scores ``fallback`` and
    counts as ``timeout``.
    """
    batch = len(completions)
    _check_lengths(batch, prompts, columns)
    scores: dict[str, torch.Tensor] = {}
    for source in sources:
        _check_args_vs_columns(source, columns)
        try:
            returned = _call(source, prompts, completions, columns)
        except RewardlabError:
            raise  # already a clear message about the user's data or config
        except _TimedOut as late:
            values = _timed_out(source, late, prompts, completions, first_row=0)
        except Exception:  # noqa: BLE001 - any bug in a user's reward: find and name the row
            values = _score_row_by_row(source, prompts, completions, columns)
        else:
            values = _validate(source, returned, batch)
        scores[source.name] = torch.tensor(values, dtype=torch.float32)
    return scores


def _score_row_by_row(
    source: RewardSource, prompts: list[str], completions: list[str], columns: Mapping[str, list[Any]]
) -> list[float]:
    """After a batch call raised: score each row alone, to name the row that raises (or, with
    ``on_error: fallback``, to keep the rows that score)."""
    values = []
    for row in range(len(completions)):
        one = {k: v[row : row + 1] for k, v in columns.items()}
        try:
            returned = _call(source, prompts[row : row + 1], completions[row : row + 1], one)
        except RewardlabError:
            raise
        except _TimedOut as late:
            values += _timed_out(source, late, prompts[row : row + 1], completions[row : row + 1], first_row=row)
            continue
        except Exception as err:
            if source.on_error != "fallback":
                raise RewardlabError(
                    f"reward '{source.name}' raised {type(err).__name__}: {err} ({_where(err)}) "
                    f"on completion {row} (prompt {_show(prompts[row])}, completion "
                    f"{_show(completions[row])}); fix the reward, or set on_error: fallback on "
                    "it to score such rows `fallback` and count them"
                ) from err
            source.failures["raised"] += 1
            values.append(source.fallback)
            continue
        values += _validate(source, returned, 1, first_row=row)
    return values


class _TimedOut(Exception):
    """A reward call that did not return within its source's ``timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no result after {seconds:g} s")
        self.seconds = seconds


def _call(
    source: RewardSource, prompts: list[str], completions: list[str], columns: Mapping[str, list[Any]]
) -> Any:
    """``source.fn(prompts, completions, **columns)``; with a ``timeout``, in a worker thread
    that is abandoned (``_TimedOut``) when it has not returned in time. Python cannot stop a
    thread, so an abandoned call runs on in the background until it returns; the thread is a
    daemon, so it never keeps the process alive."""
    seconds = getattr(source, "timeout", None)
    if seconds is None:  # in the caller's thread, as always (signal-based limits work there)
        return source.fn(prompts, completions, **columns)
    outcome: dict[str, Any] = {}
    grad = torch.is_grad_enabled()  # grad mode is per thread: keep the caller's

    def run() -> None:
        try:
            with torch.set_grad_enabled(grad):
                outcome["value"] = source.fn(prompts, completions, **columns)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who decides
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"reward-{source.name}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimedOut(seconds)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _timed_out(
    source: RewardSource, late: _TimedOut, prompts: list[str], completions: list[str], first_row: int
) -> list[float]:
    """A call that timed out: with ``on_error: fallback`` each of its rows scores ``fallback``
    (counted as ``timeout``); otherwise an error naming the reward and the rows."""
    if source.on_error == "fallback":
        source.failures["timeout"] += len(completions)
        return [source.fallback] * len(completions)
    if len(completions) == 1:
        rows = f"completion {first_row}"
    else:
        rows = f"a batch of {len(completions)} completions ({first_row}-{first_row + len(completions) - 1})"
    raise RewardlabError(
        f"reward '{source.name}' did not return within its timeout ({late.seconds:g} s) on {rows} "
        f"(the first: prompt {_show(prompts[0])}, completion {_show(completions[0])}); the call "
        "was abandoned; make the reward faster, raise its timeout, or set on_error: fallback on "
        f"it to score such rows `fallback` and count them (failures/{source.name}/timeout)"
    ) from None


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


def _validate(source: RewardSource, returned: Any, batch: int, first_row: int = 0) -> list[float]:
    """The scores as floats with NaN for None, or a RewardlabError saying what is wrong."""
    name = source.name
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
    return [_one_score(source, first_row + row, value) for row, value in enumerate(returned)]


def _one_score(source: RewardSource, row: int, value: Any) -> float:
    name = source.name
    if value is None:
        return math.nan
    # bool is an int subclass, but True is almost surely a forgotten float(...) or a bug.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        as_float = float(value)
        if math.isfinite(as_float):
            return as_float
        if source.on_error == "fallback":
            source.failures["not_finite"] += 1
            return source.fallback
        raise RewardlabError(
            f"reward '{name}' returned {as_float} for completion {row}; {_CONTRACT} "
            "(finite; return None, not NaN, when the reward does not apply; or set "
            "on_error: fallback on the reward to score such rows `fallback` and count them)"
        )
    raise RewardlabError(
        f"reward '{name}' returned {_show(value)} for completion {row}; {_CONTRACT}"
    )


def _where(err: BaseException) -> str:
    """``file:line in function`` of the innermost frame of ``err``'s traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "no traceback"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def drain_failure_counts(sources: Sequence[RewardSource]) -> dict[str, float]:
    """``failures/<name>/<reason>`` counts since the last call, from rewards that count
    the rows they could not really score (math_verify: timeouts, unparsable references,
    completions without an answer; code_exec: timeouts, blocked calls, ...) and from the
    ``on_error: fallback`` rows (``raised``, ``not_finite``, ``timeout``); the counters restart
    at zero."""
    out: dict[str, float] = {}
    for source in sources:
        for reason, count in drain_source_failures(source).items():
            out[f"failures/{source.name}/{reason}"] = float(count)
    return out


def drain_source_failures(source: RewardSource) -> Counter[str]:
    """One source's failure counts since the last call (its reward's own counter and the
    ``on_error: fallback`` one, added up), both counters restarting at zero."""
    total: Counter[str] = Counter()
    for failures in (getattr(source.fn, "failures", None), source.failures):
        if isinstance(failures, Counter):
            total.update(failures)
            failures.clear()
    return total


def drain_source_metrics(sources: Sequence[RewardSource]) -> dict[str, float]:
    """``reward/<name>/<key>`` values a reward reports about its own scoring since the last
    call (a reward exposes them with a ``drain_metrics()`` method; e.g. a reward-model
    ensemble's disagreement)."""
    out: dict[str, float] = {}
    for source in sources:
        drain = getattr(source.fn, "drain_metrics", None)
        if callable(drain):
            out |= {f"reward/{source.name}/{key}": float(value) for key, value in drain().items()}
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
