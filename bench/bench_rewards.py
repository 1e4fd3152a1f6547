"""The rule reward of the GRPO cases, importable by rewardlab as ``bench_rewards:digit_share``."""

from __future__ import annotations

from typing import Any


def digit_share(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
