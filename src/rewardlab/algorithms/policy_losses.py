"""Policy losses: log-probs, old log-probs, advantages, masks -> loss per token (+ metrics).

Every entry returns ``(loss, metrics)``: ``loss`` is [B, T] (padding included, the
aggregation masks it) and ``metrics`` maps names to [B, T] per-token values that the trainer
averages over real tokens.
"""

from __future__ import annotations

import torch

from rewardlab.registry import Registry

POLICY_LOSSES = Registry("policy_loss")


@POLICY_LOSSES.register(
    "ppo_clip",
    paper="Proximal Policy Optimization Algorithms; DAPO: An Open-Source LLM Reinforcement "
    "Learning System at Scale (clip-higher)",
    arxiv="1707.06347; 2503.14476",
    formula="L_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t), "
    "rho_t = exp(logp_t - old_logp_t)",
)
def ppo_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate objective, per token, with separate low and high clip ranges.

    Schulman et al. (arXiv 1707.06347) eq. 7 with eps split into eps_low / eps_high as in
    DAPO's "clip-higher" (arXiv 2503.14476, eq. 10): raising eps_high lets low-probability
    tokens grow, which counters entropy collapse. ``clip_low == clip_high`` is plain PPO.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        metrics = {
            "clip_fraction": (clipped < unclipped).float(),
            "ratio": ratio.detach(),
        }
    return loss, metrics
