"""The batch that flows through the online loop: tensors only, one row per completion.

Shapes: B rows (prompts x completions per prompt), P prompt tokens, T completion tokens.
Prompts are *left*-padded so that every completion starts at the same column (one slice
gets all completion logits); completions are right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

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

    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    def axis_fields(self) -> dict[str, torch.Tensor]:
        """The batch fields an axis function may ask for, by their conventional names."""
        out: dict[str, torch.Tensor] = {
            "mask": self.completion_mask,
            "group": self.group,
            "truncated": self.truncated,
            "lengths": self.completion_mask.sum(-1),
        }
        for name in ("rewards", "advantages", "old_logp", "ref_logp", "sampling_logp"):
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
