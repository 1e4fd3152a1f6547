"""Judges (preference functions) used by the tests, imported as ``judges:<function>``, and a
reward for ``spo`` to compare.

Each is called as ``fn(prompts, completions_a, completions_b, **args, **columns)`` and returns
P(a beats b) per row.
"""

from __future__ import annotations

import math
from typing import Any

# Rows per call of rock_paper_scissors, so tests can count how often the judge is asked.
CALLS: list[int] = []

_BEATS = {"rock": "scissors", "paper": "rock", "scissors": "paper"}


def rock_paper_scissors(
    prompts: list[str], completions_a: list[str], completions_b: list[str], **columns: Any
) -> list[float]:
    """Intransitive: rock beats scissors beats paper beats rock; 0.5 on a tie or a non-move."""
    CALLS.append(len(prompts))
    probs = []
    for a, b in zip(completions_a, completions_b, strict=True):
        a, b = a.strip(), b.strip()
        probs.append(1.0 if _BEATS.get(a) == b else 0.0 if _BEATS.get(b) == a else 0.5)
    return probs


def more_digits(
    prompts: list[str], completions_a: list[str], completions_b: list[str], **columns: Any
) -> list[float]:
    """1 when a has more digits than b, 0 when fewer, 0.5 on a tie (a judge the tiny policy
    can climb)."""
    probs = []
    for a, b in zip(completions_a, completions_b, strict=True):
        da, db = sum(c.isdigit() for c in a), sum(c.isdigit() for c in b)
        probs.append(1.0 if da > db else 0.0 if da < db else 0.5)
    return probs


def misbehaving(
    prompts: list[str],
    completions_a: list[str],
    completions_b: list[str],
    mode: str = "ok",
    **columns: Any,
) -> Any:
    """0.5 per row, except that the row whose completion a is "bad" gets 1.5 / NaN / an
    exception (``mode``), or the whole return has one value too many (``wrong_length``)."""
    if mode == "wrong_length":
        return [0.5] * (len(prompts) + 1)
    probs: list[Any] = []
    for a in completions_a:
        if a != "bad" or mode == "ok":
            probs.append(0.5)
        elif mode == "raises":
            raise ValueError("cannot judge this one")
        else:
            probs.append({"too_big": 1.5, "nan": math.nan, "bool": True, "text": "0.5"}[mode])
    return probs


def strict_args(
    prompts: list[str], completions_a: list[str], completions_b: list[str], margin: float = 0.0
) -> list[float]:
    """A judge without **columns, so its arg names are checked when it is loaded."""
    return [min(1.0, 0.5 + margin)] * len(prompts)


not_callable = 0.5


def flaky_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A reward (for spo to compare) that gives NaN for the completion "?", else 1."""
    return [math.nan if c == "?" else 1.0 for c in completions]
