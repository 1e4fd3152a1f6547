"""Reward functions used by the trainer tests (imported by the trainers as ``module:function``)."""

from __future__ import annotations

from typing import Any


def digit_fraction(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A dense reward a freshly initialized model can climb: the share of digits in the text."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
