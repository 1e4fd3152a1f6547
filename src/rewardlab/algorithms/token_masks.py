"""Token masks: batch fields -> a [B, T] 0/1 mask of the tokens whose loss counts.

Every mask is a subset of ``mask`` (the real completion tokens) and has its dtype. The trainer
multiplies the loss mask by it; whether the dropped tokens also leave the aggregation's
normalizer is the aggregation's business, not the mask's.
"""

from __future__ import annotations

import math

import torch

from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

TOKEN_MASKS = Registry("token_mask")

_WHERE = "algorithm.token_masks[].params"


def top_count(fraction: float, n_real: int) -> int:
    """ceil(fraction * n_real), at least 1 when there is a real token, at most n_real.

    A float guard keeps exact products exact: 0.3 * 10 is 3.0000000000000004 in floating point
    and must give 3, not 4.
    """
    if n_real <= 0:
        return 0
    k = math.ceil(round(fraction * n_real, 9))
    return min(max(k, 1), n_real)


@TOKEN_MASKS.register(
    "top_entropy",
    paper="Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement "
    "Learning for LLM Reasoning",
    arxiv="2506.01939",
    formula="keep the k = ceil(rho * n_real) real tokens of the batch with the highest entropy "
    "H_t (rho = top_fraction)",
)
def top_entropy(
    entropy: torch.Tensor, mask: torch.Tensor, *, top_fraction: float = 0.2
) -> torch.Tensor:
    """Policy gradient on the high-entropy "forking" tokens only (Wang et al., arXiv 2506.01939).

    Only a minority of chain-of-thought tokens have high entropy; they are the forks that
    choose a reasoning path, and RLVR mostly changes them. Restricting the policy-gradient loss
    to the top 20% highest-entropy tokens of each batch matches full-gradient training on
    Qwen3-8B and beats it on Qwen3-14B/32B, while training on the other 80% only hurts.

    Keeps exactly k = ceil(``top_fraction`` * n_real) tokens, n_real being the number of real
    tokens of the whole batch (at least one when there are real tokens): those with the
    highest ``entropy``. Ties at the threshold are broken by position (row-major: earlier row,
    then earlier token first), so the count is always exactly k; the paper's indicator
    1[H_t >= tau_rho] would keep every token tied at the threshold. Padding never counts.

    Confirmed from the authors' code (``Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR``,
    ``get_global_entropy_top_mask``): the top ``top_ratio`` of the response tokens,
    k = ceil(n * ratio) with a minimum of 1, selected by ``topk`` over all response tokens
    together, default ratio 0.2. Differences: the authors call it inside the actor update, per
    micro-batch, on the entropy of the policy being trained; here ``entropy`` [B, T] is the
    sampling policy's per-token entropy of the whole batch, computed once by the trainer
    before the update, so the mask does not depend on the micro-batch split and stays fixed
    across PPO epochs. At the first on-policy update the two policies coincide.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ConfigError(
            f"{_WHERE}.top_fraction: top_entropy needs 0 < top_fraction <= 1, got {top_fraction!r}"
        )
    real = mask.bool()
    k = top_count(top_fraction, int(real.sum().item()))
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    if k > 0:
        scores = torch.where(real, entropy.detach().float(), float("-inf")).flatten()
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[:k]] = True
    return keep.view_as(mask).to(mask.dtype)


@TOKEN_MASKS.register(
    "truncated",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale (overlong filtering)",
    arxiv="2503.14476",
    formula="m'_it = m_it * (1 - truncated_i)",
)
def truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering (arXiv 2503.14476, section 3.4): mask the loss of every
    completion that was cut off by the generation budget.

    A truncated completion never reached its answer, so its reward (usually a failure) says
    little about its reasoning; punishing it adds reward noise. DAPO masks the loss of
    truncated samples (TRL's ``mask_truncated_completions``). ``truncated`` [B] is True where
    generation stopped at the budget rather than at EOS. The completion still counts in its
    group's reward statistics (the advantage is computed before the mask).
    """
    keep = (~truncated.bool()).to(mask.dtype)
    return mask * keep[:, None]
