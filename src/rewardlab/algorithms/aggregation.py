"""Loss aggregation: loss per token -> the scalar that one micro-batch contributes.

Every mode divides by a normalizer of the *whole* accumulated batch (``total_tokens`` or
``total_seqs``, computed once per optimizer step by the trainer), never by the micro-batch's
own size. So the gradient of a batch is exactly the sum of its micro-batches' gradients,
whatever the micro-batch size.
"""

from __future__ import annotations

import torch

from rewardlab.registry import Registry

AGGREGATIONS = Registry("aggregation")


@AGGREGATIONS.register(
    "token_mean",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale (token-level loss)",
    arxiv="2503.14476",
    formula="L = sum_{i,t} m_it * l_it / sum_{i,t} m_it",
)
def token_mean(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """Every real token of the batch weighs the same (DAPO, arXiv 2503.14476, eq. 12), so long
    completions are not under-weighted."""
    return (loss * mask).sum() / total_tokens


@AGGREGATIONS.register(
    "seq_mean_token_mean",
    paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arxiv="2402.03300",
    formula="L = (1/N) sum_i (sum_t m_it * l_it / sum_t m_it)",
)
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, total_seqs: float) -> torch.Tensor:
    """GRPO's original aggregation (DeepSeekMath, arXiv 2402.03300, eq. 3): average over each
    sequence's tokens, then over sequences."""
    mask = mask.to(loss.dtype)
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / total_seqs


@AGGREGATIONS.register(
    "seq_mean_token_sum_norm",
    paper="Understanding R1-Zero-Like Training: A Critical Perspective",
    arxiv="2503.20783",
    formula="L = (1/N) sum_i sum_t m_it * l_it / C, C = norm_len (default: max completion length)",
)
def seq_mean_token_sum_norm(
    loss: torch.Tensor,
    mask: torch.Tensor,
    total_seqs: float,
    max_len: int,
    *,
    norm_len: float | None = None,
) -> torch.Tensor:
    """Dr. GRPO's aggregation (arXiv 2503.20783): sum each sequence's token losses and divide by
    a constant C (the generation budget) instead of the sequence's own length, removing the
    length bias that favours long wrong answers."""
    constant = float(norm_len) if norm_len is not None else float(max_len)
    return (loss * mask).sum() / (total_seqs * constant)


@AGGREGATIONS.register(
    "seq_mean_token_sum",
    paper="Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
    "Feedback in LLMs (the whole completion as one action)",
    arxiv="2402.14740",
    formula="L = (1/N) sum_i sum_t m_it * l_it",
)
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, total_seqs: float) -> torch.Tensor:
    """Sum each sequence's token losses, then average over sequences: the sequence-level
    REINFORCE objective, since sum_t logp_t = log pi(y) (RLOO treats the whole completion as one
    action, arXiv 2402.14740); verl's "seq-mean-token-sum". Longer sequences weigh more; this is
    ``seq_mean_token_sum_norm`` with C = 1."""
    return (loss * mask).sum() / total_seqs
