"""Reward functions used by the trainer tests (imported by the trainers as ``module:function``)."""

from __future__ import annotations

from typing import Any


def digit_fraction(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A dense reward a freshly initialized model can climb: the share of digits in the text."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def constant_on_even_prompts(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """0.5 for every completion of a prompt of even length (a group with nothing to learn),
    the digit share otherwise: half the groups are ones a batch filter should drop."""
    return [
        0.5 if len(prompt) % 2 == 0 else sum(c.isdigit() for c in text) / max(len(text), 1)
        for prompt, text in zip(prompts, completions, strict=True)
    ]
