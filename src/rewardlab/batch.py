"""The batch that flows through the online loop: tensors only, one row per completion.

Shapes: B rows (prompts x completions per prompt), P prompt tokens, T completion tokens.
Prompts are *left*-padded so that every completion starts at the same column (one slice
gets all completion logits); completions are right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, T] right-padded
    completion_mask: torch.Tensor  # [B, T] 1 on real tokens, including the closing EOS
    group: torch.Tensor  # [B] which prompt a row belongs to
    truncated: torch.Tensor  # [B] bool: stopped by max_new_tokens, not EOS
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # source -> [B], NaN = n/a
    rewards: torch.Tensor | None = None  # [B]
    advantages: torch.Tensor | None = None  # [B, T]
    old_logp: torch.Tensor | None = None  # [B, T]
    ref_logp: torch.Tensor | None = None  # [B, T]
    sampling_logp: torch.Tensor | None = None  # [B, T] from the rollout engine, if it gives them
    entropy: torch.Tensor | None = None  # [B, T] of the sampling policy (token masks read it)
    baseline_rewards: torch.Tensor | None = None  # [B] reward of the prompt's greedy completion
    token_rewards: torch.Tensor | None = None  # [B, T] outcome reward on the last token, - KL
    values: torch.Tensor | None = None  # [B, T] the critic's values before the update
    returns: torch.Tensor | None = None  # [B, T] the critic's regression targets
    loss_mask: torch.Tensor | None = None  # [B, T] tokens whose loss counts (token masks)
    is_weights: torch.Tensor | None = None  # [B, T] mismatch-correction weights

    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    def axis_fields(self) -> dict[str, Any]:
        """The batch fields an axis function may ask for, by their conventional names."""
        out: dict[str, Any] = {
            "mask": self.completion_mask,
            "group": self.group,
            "truncated": self.truncated,
            "lengths": self.completion_mask.sum(-1),
            "scores": self.scores,
        }
        for name in (
            "rewards",
            "advantages",
            "old_logp",
            "ref_logp",
            "sampling_logp",
            "entropy",
            "baseline_rewards",
            "token_rewards",
            "values",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """The rows ``index`` (a mini- or micro-batch), with every tensor field sliced."""
        sliced = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                sliced[f.name] = value[index]
            elif isinstance(value, dict):
                sliced[f.name] = {k: v[index] for k, v in value.items()}
        return replace(self, **sliced)


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several (rollout rounds of one step): prompts re-padded on the left,
    completions on the right, group ids kept (callers make them distinct across parts).

    Fields set on some parts but not others cannot be joined and are an error.
    """
    if len(parts) == 1:
        return parts[0]
    prompt_width = max(p.prompt_ids.shape[1] for p in parts)
    width = max(p.completion_ids.shape[1] for p in parts)
    joined: dict[str, Any] = {}
    for f in fields(RolloutBatch):
        values = [getattr(p, f.name) for p in parts]
        if all(v is None for v in values):
            joined[f.name] = None
        elif any(v is None for v in values):
            raise ValueError(f"concat_batches: '{f.name}' is set on some parts only")
        elif f.name == "scores":
            joined[f.name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
        elif values[0].dim() == 2:
            left = f.name.startswith("prompt_")
            target = prompt_width if left else width
            fill = pad_id if f.name in ("prompt_ids", "completion_ids") else 0
            joined[f.name] = torch.cat([_pad(v, target, fill, left) for v in values])
        else:
            joined[f.name] = torch.cat(values)
    return RolloutBatch(**joined)


def _pad(value: torch.Tensor, width: int, fill: float, left: bool) -> torch.Tensor:
    extra = width - value.shape[1]
    if extra == 0:
        return value
    pad = value.new_full((value.shape[0], extra), fill)
    return torch.cat([pad, value] if left else [value, pad], dim=1)
