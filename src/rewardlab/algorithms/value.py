"""Critic losses for PPO with a learned value function: values, returns and masks -> loss per token.

Each function returns a [B, T] loss (0 on padding); reducing it to a scalar is the aggregation
axis's job, as for the policy losses.
"""

from __future__ import annotations

import torch

from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

VALUE_LOSSES = Registry("value_loss")


@VALUE_LOSSES.register(
    "ppo",
    paper="Proximal Policy Optimization Algorithms (value clipping from OpenAI baselines ppo2)",
    arxiv="1707.06347",
    formula="0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2); "
    "clip = None: 0.5 * (V - R)^2",
)
def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """PPO's (clipped) value loss per token, [B, T].

    "Proximal Policy Optimization Algorithms" (Schulman et al., arXiv 1707.06347) trains the
    critic by regression on the returns, L = (V - R)^2 (the paper's L^VF); the factor 0.5 and
    the clipping come from OpenAI baselines' ppo2 implementation, not the paper:
    L = 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2), a pessimistic bound that
    keeps the new value within c of the value at rollout time, as the policy ratio is kept
    near 1. "Implementation Matters in Deep RL: A Case Study on PPO and TRPO" (Engstrom et al.,
    arXiv 2005.12729) found value clipping does not help and can hurt; ``clip=None`` gives the
    plain 0.5 (V - R)^2. Where V has left the band [V_old - c, V_old + c] and the band's edge
    is farther from R than V, the clipped term wins and is constant in V: no gradient, and a
    loss of 0.5 (edge - R)^2 even at V = R. That is how clipping can slow the critic down
    (see the hand-computed test).

    ``values`` are the critic's current predictions (with gradient), ``old_values`` its
    predictions when the rollout was scored, ``returns`` the regression target
    (``gae_returns``); all [B, T]. ``c`` is in reward units, so it depends on the reward's scale.
    """
    if clip is not None and clip < 0:
        raise ConfigError(f"value loss clip must be >= 0 or None, got {clip!r}")
    returns = returns.detach().to(values.dtype)
    loss = (values - returns).square()
    if clip is not None:
        old = old_values.detach().to(values.dtype)
        clipped = torch.clamp(values, old - clip, old + clip)
        loss = torch.maximum(loss, (clipped - returns).square())
    return 0.5 * loss * mask.to(values.dtype)
