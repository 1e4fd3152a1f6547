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


def _masked_seq_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each row's real tokens ([B, T] -> [B]); an empty row gives 0.

    Padding is selected away with ``where`` rather than multiplied by 0, so a non-finite value
    on a padding position cannot leak into the row's mean.
    """
    real = mask.bool()
    total = torch.where(real, values, torch.zeros_like(values)).sum(-1)
    return total / real.sum(-1).clamp(min=1).to(values.dtype)


@POLICY_LOSSES.register(
    "pg",
    paper="Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement "
    "Learning (REINFORCE, Williams 1992); Back to Basics: Revisiting REINFORCE Style "
    "Optimization for Learning from Human Feedback in LLMs",
    arxiv="2402.14740",
    formula="L_t = -A_t * rho_t, rho_t = exp(logp_t - old_logp_t); "
    "dL/dlogp_t = -A_t * rho_t (= -A_t at rho = 1)",
)
def pg(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain policy gradient (REINFORCE; Williams 1992, no arXiv id), with no clipping.

    The loss is written with the importance ratio, ``L_t = -A_t * exp(logp_t - old_logp_t)``,
    so its gradient is ``-A_t * rho_t * grad logp_t``. On-policy (one update per rollout, so
    ``old_logp == logp.detach()`` and rho = 1) this is exactly REINFORCE's ``-A_t * grad logp_t``
    and the loss value is ``-A_t``; off-policy it is the unclipped importance-weighted policy
    gradient, which nothing bounds, so use it with one PPO epoch and one mini-batch (or prefer
    ``ppo_clip`` / ``cispo``). With group baselines it is the REINFORCE/RLOO update of
    "Back to Basics" (Ahmadian et al., arXiv 2402.14740).
    """
    ratio = torch.exp(logp - old_logp)
    loss = -advantages * ratio
    return loss, {"ratio": ratio.detach()}


@POLICY_LOSSES.register(
    "ppo_dual_clip",
    paper="Mastering Complex Control in MOBA Games with Deep Reinforcement Learning (dual-clip "
    "PPO); Proximal Policy Optimization Algorithms",
    arxiv="1912.09729; 1707.06347",
    formula="L_t = L^clip_t if A_t >= 0 else min(L^clip_t, -c * A_t), "
    "L^clip_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)",
)
def ppo_dual_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clip (arXiv 1707.06347) plus the dual clip of Ye et al. (arXiv 1912.09729) for
    negative advantages.

    For A < 0, PPO's pessimistic bound keeps ``rho * A`` however large rho is, so one token
    whose probability rose a lot (stale or off-policy data) gives an unbounded loss and
    gradient. Dual clip caps that loss at ``-c * A`` (c > 1): where ``rho > c`` the loss is the
    constant ``-c * A`` and its gradient is 0. For A >= 0 it is ``ppo_clip`` unchanged.

    A separate entry rather than a parameter of ``ppo_clip``, so that ``ppo_clip``'s parameter
    schema and numbers stay exactly as they were. The default ``dual_clip = 3.0`` is the value
    verl uses (``clip_ratio_c``); the paper's own choice of c was not checked against its text.
    """
    if dual_clip <= 1.0:
        raise ValueError(f"ppo_dual_clip: dual_clip must be > 1, got {dual_clip}")
    loss, metrics = ppo_clip(logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high)
    bound = -dual_clip * advantages
    negative = advantages < 0
    dual = torch.where(negative, torch.minimum(loss, bound), loss)
    with torch.no_grad():
        metrics["dual_clip_fraction"] = (negative & (loss > bound)).float()
    return dual, metrics


@POLICY_LOSSES.register(
    "gspo",
    paper="Group Sequence Policy Optimization",
    arxiv="2507.18071",
    formula="L_it = -min(s_it * A_it, clip(s_it, 1 - eps_low, 1 + eps_high) * A_it), "
    "s_it = sg[s_i] * exp(logp_it - sg[logp_it]), "
    "s_i = exp(mean_{t real} (logp_it - old_logp_it))",
)
def gspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al., arXiv 2507.18071): one importance ratio per sequence, clipped.

    The sequence ratio is the length-normalized likelihood ratio
    ``s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t (logp_it - old_logp_it))`` over the
    real tokens of row i. This is the paper's token-level form "GSPO-token": every token gets
    ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]``, whose value is s_i and whose gradient w.r.t.
    ``logp_it`` is s_i, then the PPO clipped surrogate per token. With one advantage per
    sequence and ``seq_mean_token_mean`` aggregation this is exactly the sequence-level GSPO
    objective, and a clipped sequence contributes no gradient at all; the loss is still per
    token so every aggregation applies.

    The clip ranges are tiny because s_i is a per-token geometric mean: the paper sets the
    left / right ranges to 3e-4 / 4e-4 (as also quoted by TRL's and others' reproductions).
    """
    log_seq_ratio = _masked_seq_mean(logp - old_logp, mask)  # [B]
    log_ratio = log_seq_ratio.detach()[:, None] + (logp - logp.detach())
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        metrics = {
            "clip_fraction": (clipped < unclipped).float(),
            "ratio": ratio.detach(),
        }
    return loss, metrics


@POLICY_LOSSES.register(
    "gmpo",
    paper="Geometric-Mean Policy Optimization",
    arxiv="2507.20673",
    formula="L_it = -A_it * exp(mean_{t real} d_it), "
    "d_it = min(delta_it, clip(delta_it, -eps_low, eps_high)) if A_it > 0 "
    "else max(delta_it, clip(delta_it, -eps_low, eps_high)), delta_it = logp_it - old_logp_it",
)
def gmpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO (Zhao et al., arXiv 2507.20673): maximize the geometric mean of the token-level
    importance-weighted rewards instead of GRPO's arithmetic mean.

    Each token's log-ratio ``delta_t`` is clipped in log space, one-sided by the sign of the
    advantage (PPO's pessimistic bound): for A > 0 it is capped at ``+clip_high``, for A < 0
    floored at ``-clip_low``. The sequence weight is the geometric mean of the clipped token
    ratios, ``exp(mean_t d_t)``, and the sequence loss is ``-A_i * exp(mean_t d_t)``; a token
    beyond its clip range contributes no gradient, the others get
    ``-A_i * exp(mean d) / |o_i|``. The clip range is in log space: the default 0.4 / 0.4 is
    the ratio range (e^-0.4, e^0.4), which the official code uses (``CLIPRANGE=0.4``) and is
    much wider than GRPO's.

    Every real token of row i carries the whole sequence loss, so ``seq_mean_token_mean``
    gives the paper's objective (mean over sequences); ``token_mean`` would weight each
    sequence by its length. The clipping side is taken per token from ``advantages``; the
    paper, the official code and verl assume one advantage per sequence, and with a per-token
    advantage this generalization is ours (untested against the paper).
    """
    delta = logp - old_logp
    bounded = torch.clamp(delta, -clip_low, clip_high)
    positive = advantages > 0
    clipped_delta = torch.where(
        positive, torch.minimum(delta, bounded), torch.maximum(delta, bounded)
    )
    seq_ratio = torch.exp(_masked_seq_mean(clipped_delta, mask))[:, None]  # [B, 1]
    loss = -advantages * seq_ratio
    with torch.no_grad():
        clipped = (positive & (delta > clip_high)) | ((advantages < 0) & (delta < -clip_low))
        metrics = {
            "clip_fraction": clipped.float(),
            "ratio": seq_ratio.detach().expand_as(delta),
        }
    return loss, metrics


@POLICY_LOSSES.register(
    "cispo",
    paper="MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention (CISPO)",
    arxiv="2506.13585",
    formula="L_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) * A_t * logp_t, "
    "rho_t = exp(logp_t - old_logp_t)",
)
def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float | None = None,
    clip_high: float = 4.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance-sampling weight, not the update.

    ``L_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) * A_t * logp_t``: a REINFORCE term whose
    weight is the clipped, detached ratio, so its gradient is
    ``-clip(rho_t) * A_t * grad logp_t`` and, unlike PPO, no token's gradient is ever dropped
    (only scaled down). The loss *value* is not a surrogate objective (it scales with logp);
    only its gradient is meaningful. The paper aggregates over all tokens of the batch
    (``token_mean``).

    ``clip_low=None`` (default) means no lower bound, as in the paper, which sets eps_low to a
    large value and tunes only eps_high. The default ``clip_high=4.0`` (weight capped at 5) is
    not from MiniMax-M1 (its value was not confirmed from the sources at hand); it follows the
    cap of 5 that TRL's documentation attributes to ScaleRL (arXiv 2510.13786). Tune it.
    """
    ratio = torch.exp(logp - old_logp).detach()
    low = None if clip_low is None else 1.0 - clip_low
    weight = torch.clamp(ratio, min=low, max=1.0 + clip_high)
    loss = -weight * advantages * logp
    with torch.no_grad():
        metrics = {"clip_fraction": (weight != ratio).float(), "ratio": ratio}
    return loss, metrics
