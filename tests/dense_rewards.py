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


def seven_fraction(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A gold reward the warm-started model rarely earns: the share of '7's in the text. Its
    own samples hold few 7s, so pairs drawn from it once say little; better pairs come only
    from sampling a policy that has already moved toward 7s."""
    return [text.count("7") / max(len(text), 1) for text in completions]


TARGET = "73197"


def target_match(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A gold reward the warm-started model rarely earns: the share of the five positions
    where the completion has the character of ``TARGET`` (a random 5-digit string's match is
    about 1 in 10 per position, a letter string's 0)."""
    return [sum(a == b for a, b in zip(text, TARGET, strict=False)) / len(TARGET) for text in completions]


def target_prefix(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A gold reward that needs exploration: the length of the completion's longest common
    prefix with ``TARGET``, over its length. The warm-started model's own samples start with
    '7' one time in twenty and with '73' one in four hundred, so pairs drawn from it once teach
    the first character only; each later character is seen only by a policy that has already
    learned the ones before it."""
    scores = []
    for text in completions:
        k = 0
        while k < min(len(text), len(TARGET)) and text[k] == TARGET[k]:
            k += 1
        scores.append(k / len(TARGET))
    return scores


def raises_on_digits(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A buggy reward: raises on any completion that holds a digit (most of them)."""
    for text in completions:
        if any(c.isdigit() for c in text):
            raise ValueError(f"cannot score {text!r}")
    return [0.0 for _ in completions]
