"""A reward that costs time per completion, like a sandboxed test run or a judge call: the
digit share of the text, after ``SECONDS`` of waiting per completion (used by
scripts/ray_scaling.py to measure what reward workers overlap)."""

from __future__ import annotations

import time
from typing import Any

SECONDS = 0.02


def slow_digits(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    time.sleep(SECONDS * len(completions))
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
