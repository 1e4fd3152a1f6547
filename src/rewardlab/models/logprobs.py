"""Per-token log-probabilities of completions under a model, without [B, T+P, V] logits."""

from __future__ import annotations

from typing import Any

import torch

from rewardlab.batch import RolloutBatch


def forward_completion_logits(model: Any, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Logits [B, T, V] that predict each completion token (scaled by 1/temperature so that
    log-probs are those of the sampling distribution)."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    # Same positions as generate() used: count only real tokens, so left padding is invisible.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    width = batch.completion_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        logits_to_keep=width + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] in float32, without materializing the full log-softmax.

    Low-precision logits are upcast one row at a time: subtracting two bf16 numbers would
    round a confident token's log-prob to 0 (errors of ~0.03 that go straight into PPO
    ratios), while upcasting the whole [B, T, V] tensor at once would double peak memory.
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = [token_logprobs(row.float(), row_ids) for row, row_ids in zip(logits, ids, strict=True)]
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution, [B, T]; differentiable (the entropy bonus
    needs its gradient), so pass detached logits when only the value is wanted."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def batch_logprobs(model: Any, batch: RolloutBatch, temperature: float, micro_batch: int) -> torch.Tensor:
    """Completion log-probs [B, T] in micro-batches, no gradient (old / reference policy)."""
    parts = []
    for start in range(0, batch.size, micro_batch):
        part = batch.select(torch.arange(start, min(start + micro_batch, batch.size)))
        logits = forward_completion_logits(model, part, temperature)
        parts.append(token_logprobs(logits, part.completion_ids))
    return torch.cat(parts, 0)
