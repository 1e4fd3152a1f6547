"""Policy losses: log-probs, old log-probs, advantages, masks -> loss per token (+ metrics).

Every entry returns ``(loss, metrics)``: ``loss`` is [B, T] (padding included, the
aggregation masks it) and ``metrics`` maps names to [B, T] per-token values that the trainer
averages over real tokens.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import group_index
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


# --------------------------------------------------------------------------- helpers (zoo 2)


def _masked_batch_mean(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the real tokens of the whole (micro-)batch; no tokens gives 0.

    Padding is selected away with ``where``, so a non-finite padding value cannot leak in.
    """
    total = torch.where(real, values, torch.zeros_like(values)).sum()
    return total / real.sum().clamp(min=1).to(values.dtype)


def _token_covariance(
    logp: torch.Tensor, advantages: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Per-token centred covariance term of Cui et al. (arXiv 2505.22617), detached:
    ``cov_t = (logp_t - mean logp) * (A_t - mean A)``, both means over the real tokens of the
    tensors given (a micro-batch in the trainer). Padding positions get 0."""
    with torch.no_grad():
        lp = logp.detach()
        centred_logp = lp - _masked_batch_mean(lp, real)
        centred_adv = advantages - _masked_batch_mean(advantages, real)
        cov = centred_logp * centred_adv
        return torch.where(real, cov, torch.zeros_like(cov))


def _token_budget(fraction: float, n_real: int, name: str) -> int:
    """How many of ``n_real`` tokens a fraction selects: 0 for fraction 0, otherwise
    ``max(1, int(fraction * n_real))`` (at least one token, as the reference code does),
    never more than ``n_real``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    if fraction == 0.0 or n_real == 0:
        return 0
    return min(n_real, max(1, int(fraction * n_real)))


# --------------------------------------------------------------------------- sapo


@POLICY_LOSSES.register(
    "sapo",
    paper="Soft Adaptive Policy Optimization",
    arxiv="2511.20347",
    formula="L_t = -f(rho_t) * A_t, f(rho) = (4 / tau) * sigmoid(tau * (rho - 1)), "
    "tau = tau_pos if A_t > 0 else tau_neg, rho_t = exp(logp_t - old_logp_t); "
    "dL/dlogp_t = -A_t * rho_t * 4 s_t (1 - s_t), s_t = sigmoid(tau * (rho_t - 1))",
)
def sapo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Gao et al., Qwen team, arXiv 2511.20347): PPO's hard clip replaced by a smooth,
    temperature-controlled sigmoid gate on the token importance ratio.

    Each token's surrogate is ``f(rho) * A`` with ``f(rho) = (4 / tau) * sigmoid(tau (rho - 1))``
    and ``tau = tau_pos`` for positive advantages, ``tau_neg`` otherwise. Its gradient w.r.t.
    ``logp_t`` is ``A * rho * w`` with ``w = 4 s (1 - s) = sech^2(tau (rho - 1) / 2)``, the
    soft gate: ``w = 1`` at rho = 1 (so on-policy SAPO's gradient is exactly REINFORCE's
    ``-A * grad logp``, whatever tau), and ``w`` decays smoothly to 0 as rho leaves 1, faster
    for larger tau. That decay replaces PPO's zero gradient outside the clip band; as tau -> 0
    ``w -> 1`` and the gradient becomes the unclipped ``pg`` gradient ``-A * rho``. A larger
    ``tau_neg`` damps negative-advantage tokens faster, which the paper motivates by
    negative updates spreading probability mass over many unsampled tokens.

    Note the loss *value* at rho = 1 is ``-2 A / tau``, not ``-A``: only the gradient is
    normalized by the 4 / tau factor. The log-ratio is clamped to [-20, 20] before ``exp`` (as
    verl-based ports of SAPO do), where the gate weight times rho is numerically 0 anyway.

    Confirmed (from secondary sources, all citing arXiv 2511.20347): the gate
    ``(4 / tau) sigmoid(tau (rho - 1))``, the temperature chosen by the sign of the advantage
    and the defaults tau_pos = 1.0, tau_neg = 1.05, in the ms-swift SAPO documentation (which
    quotes them as the paper's recommendation), Trinity-RFT's ``SAPOPolicyLossFn`` and verl's
    ``sapo`` policy loss. A verl-based port's docstring (citing the paper's eqs. 5-6 / 10-12)
    gives the objective as ``(1/G) sum_i (1/|y_i|) sum_t f(r_it) A_i``, i.e. the
    ``seq_mean_token_mean`` aggregation, which verl's loss defaults to (Trinity and ms-swift
    default to token-mean). Not confirmed from the paper's own text (only its abstract was
    read): the equations themselves and the aggregation it prescribes. The gradient weight
    ``4 s (1 - s)`` is derived here from ``f``.
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sapo: tau_pos and tau_neg must be > 0, got {tau_pos}, {tau_neg}")
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    tau = torch.where(
        advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg)
    )
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = -(4.0 / tau) * gate * advantages
    with torch.no_grad():
        metrics = {
            "gate_weight": 4.0 * gate * (1.0 - gate),
            "ratio": ratio.detach(),
        }
    return loss, metrics


# --------------------------------------------------------------------------- clip-cov / kl-cov


@POLICY_LOSSES.register(
    "clip_cov",
    paper="The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models "
    "(Clip-Cov)",
    arxiv="2505.22617",
    formula="L_t = 0 (gradient detached) if t in I_clip else "
    "-min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t); "
    "cov_t = (logp_t - mean logp) * (A_t - mean A) over real tokens; I_clip = a uniform random "
    "max(1, int(r * N)) of the tokens with lb < cov_t < ub that PPO does not already clip",
)
def clip_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    seed: int = 0,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov (Cui et al., arXiv 2505.22617): stop the gradient of a few random
    high-covariance tokens, the ones that drive policy entropy down; the rest is PPO clip.

    Per token, ``cov_t = (logp_t - mean logp) * (A_t - mean A)``, the means over the real
    tokens of the tensors given. Candidates are real tokens with
    ``clip_cov_lb < cov_t < clip_cov_ub`` that PPO's clip does not already cut (those have no
    gradient anyway); of the ``N`` real tokens, ``max(1, int(clip_cov_ratio * N))`` candidates
    (0 when ``clip_cov_ratio == 0``; fewer if there are fewer candidates) are drawn uniformly at
    random and get loss 0 with no gradient. The others get ``ppo_clip``'s loss, so
    ``clip_cov_ratio = 0`` is exactly ``ppo_clip``.

    Covariance and selection are computed over the tokens this function is given, i.e. one
    micro-batch in the trainer, as verl does (its loss function also sees one micro-batch): the
    means, N and the random draw depend on the micro-batch size.

    Randomness comes from a local ``torch.Generator`` seeded with ``seed``, so the function is
    pure and deterministic. ``seed`` is a batch field (not a hyperparameter), like
    ``best_random``'s in the batch filters: the learner passes one per step
    (``step_seed(run seed, step, salt)``); with a fixed seed the same positions of the
    candidate list would be drawn every time. Called directly, it defaults to 0.

    Confirmed from the authors' code (PRIME-RL "Entropy-Mechanism-of-RL", a verl fork, and
    verl's ``clip_cov`` loss adapted from it): the centred product above (used only to select
    tokens, so no gradient flows through it), the strict band, the exclusion of PPO-clipped and padding tokens, ``max(1, int(r * N))``,
    the uniform draw, and the defaults r = 2e-4, lb = 1, ub = 5 (also in the authors' 7B / 32B
    Clip-Cov scripts, which set PPO's clip ranges to 1 / 1 there, not the 0.2 default here).
    Like that code the selected tokens' loss *value* is 0 too, not just their gradient. Not
    confirmed from the paper's own text (only its abstract was read): its equations and whether
    it intends the micro-batch or the whole batch as the population.
    """
    if clip_cov_lb >= clip_cov_ub:
        raise ValueError(
            f"clip_cov: need clip_cov_lb < clip_cov_ub, got {clip_cov_lb}, {clip_cov_ub}"
        )
    loss, metrics = ppo_clip(logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high)
    real = mask.bool()
    cov = _token_covariance(logp, advantages, real)
    with torch.no_grad():
        ppo_clipped = metrics["clip_fraction"].bool()
        candidates = real & ~ppo_clipped & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        budget = _token_budget(clip_cov_ratio, int(real.sum()), "clip_cov_ratio")
        candidate_index = candidates.flatten().nonzero().squeeze(1)
        n_candidates = int(candidate_index.numel())
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n_candidates, generator=generator).to(candidate_index.device)
        chosen = torch.zeros(real.numel(), dtype=torch.bool, device=real.device)
        chosen[candidate_index[order[: min(budget, n_candidates)]]] = True
        chosen = chosen.view_as(real)
    loss = torch.where(chosen, torch.zeros_like(loss), loss)
    metrics["cov_clipped"] = chosen.to(loss.dtype)
    metrics["cov"] = cov.to(loss.dtype)
    return loss, metrics


@POLICY_LOSSES.register(
    "kl_cov",
    paper="The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models (KL-Cov)",
    arxiv="2505.22617",
    formula="L_t = -A_t * rho_t + (k * |logp_t - old_logp_t| if t in I_kl else 0); "
    "cov_t = (logp_t - mean logp) * (A_t - mean A) over real tokens; I_kl = the "
    "max(1, int(r * N)) real tokens with the largest cov_t",
)
def kl_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
    kl_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov (Cui et al., arXiv 2505.22617): the unclipped policy gradient ``pg`` plus a KL
    penalty ``kl_coef * |logp - old_logp|`` on the tokens with the largest covariance.

    ``cov_t = (logp_t - mean logp) * (A_t - mean A)``, means over the real tokens given; the top
    ``max(1, int(kl_cov_ratio * N))`` of the N real tokens by ``cov_t`` get the penalty
    (none when ``kl_cov_ratio == 0``, which is exactly ``pg``). Covariance and ranking are over
    the tokens this function is given (one micro-batch in the trainer), as verl does. No
    randomness. The penalty is |log-ratio| against the sampling policy (``old_logp``), so it is
    0 with zero gradient on-policy (one epoch, one mini-batch): there KL-Cov *is* ``pg``; it
    only acts on later updates of the same rollout.

    Confirmed from the authors' code (PRIME-RL "Entropy-Mechanism-of-RL") and verl's
    ``kl_cov`` loss: the loss ``-A rho + coef |logp - old_logp|`` on the selected tokens, the
    top-k over real tokens with ``max(1, int(r * N))``, verl's defaults ``kl_cov_ratio = 2e-4``
    and ``ppo_kl_coef = 1.0`` (our ``kl_coef``). The authors' scripts use k = 0.2% (2e-3) for
    Qwen2.5-7B and 0.02% (2e-4) for 32B, coefficient 1. Not confirmed from the paper's own text
    (only its abstract was read): its equations, and which of those values it reports.
    """
    loss, metrics = pg(logp, old_logp, advantages)
    real = mask.bool()
    cov = _token_covariance(logp, advantages, real)
    with torch.no_grad():
        budget = _token_budget(kl_cov_ratio, int(real.sum()), "kl_cov_ratio")
        ranked = torch.where(real, cov, torch.full_like(cov, -float("inf"))).flatten()
        top = torch.topk(ranked, budget).indices
        chosen = torch.zeros(real.numel(), dtype=torch.bool, device=real.device)
        chosen[top] = True
        chosen = chosen.view_as(real)
    abs_kl = (logp - old_logp).abs()
    loss = torch.where(chosen, loss + kl_coef * abs_kl, loss)
    metrics["kl_cov_selected"] = chosen.to(loss.dtype)
    metrics["abs_kl"] = abs_kl.detach()
    metrics["cov"] = cov.to(loss.dtype)
    return loss, metrics


# --------------------------------------------------------------------------- disco


@POLICY_LOSSES.register(
    "disco",
    paper="DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization",
    arxiv="2505.12366",
    formula="L_it = -J_g(i) + beta * max(KL - delta, 0)^2 on every real token of row i; "
    "J_g = mean_{o+} s(o+) - tau * log mean_{o-} exp(s(o-) / tau) (lse) "
    "or mean_{o+} s(o+) - mean_{o-} s(o-) (DisCO-b), J_g = 0 unless g has both; "
    "s = mean_t logp_t (log_l) or mean_t exp(logp_t - old_logp_t) (l_ratio); "
    "o+ : reward > threshold; KL = token mean of k3 (or k1) of KL(pi_old || pi)",
)
def disco(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    rewards: torch.Tensor,
    *,
    score: str = "log_l",
    lse: bool = True,
    tau: float = 10.0,
    beta: float = 1e3,
    delta: float = 1e-4,
    threshold: float = 0.5,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DisCO (Li et al., arXiv 2505.12366): raise the scores of a prompt's correct completions
    and lower those of its wrong ones, under a KL trust region enforced by a squared hinge.

    Score of a completion: ``log_l`` is the length-normalized log-likelihood
    ``s = mean_t logp_t``; ``l_ratio`` the mean token likelihood ratio
    ``s = mean_t exp(logp_t - old_logp_t)`` (means over the row's real tokens). Within each
    group, rows with ``reward > threshold`` are positives, the others negatives (rows with no
    real token are neither). Group objective: DisCO-b (``lse=False``)
    ``J = mean_+ s - mean_- s``; DisCO (``lse=True``, the paper's main method and what the
    official code runs) replaces the negative mean by the DRO / log-mean-exp term
    ``tau * log mean_- exp(s / tau)``, which weights high-scoring negatives more and tends to
    the plain mean as tau -> infinity. A group without positives or without negatives has
    ``J = 0`` (no gradient). The constraint ``KL(pi_old || pi) <= delta`` becomes the penalty
    ``beta * max(KL - delta, 0)^2``, KL estimated as the mean over the real tokens of the
    (micro-)batch given of ``k3 = rho - 1 - log rho`` (``kl_estimator="k3"``, verl's
    "low_var_kl", the default of the official function) or ``k1 = -log rho`` ("k1").

    Layout: every real token of row i carries ``-J_g(i) + penalty``. With the
    ``seq_mean_token_mean`` aggregation (mean over a row's tokens, summed over rows, divided by
    the mini-batch's N rows) and groups of equal size G, that is
    ``-(1/Q) sum_g J_g + (B / N) * penalty`` for a micro-batch of B rows of a mini-batch of Q
    groups: exactly the paper's objective (average of J over questions, minus the penalty) when
    the micro-batch is the whole mini-batch, and with micro-batches the penalty becomes the
    row-weighted average of the micro-batches' penalties, each with its own KL, as in the
    official code (which computes KL over the micro-batch gathered across GPUs). Use
    ``seq_mean_token_mean``; other aggregations weight groups by their token counts. Groups of
    unequal size (or empty completions) are weighted by their number of non-empty rows.

    The function needs whole groups: the trainer must never split a group across
    micro-batches (a split group is scored as two smaller groups).

    Confirmed from code: a verl fork's ``compute_policy_loss_disco_logL`` (next to the same
    group's DRPO loss; taken to be the authors' code, repository not identified) and verl's DisCO
    port (verl PR 3357, as copied into a third-party file): the ``logL`` / ``Lratio`` scores above, the
    log-mean-exp over negatives with temperature tau (its value there is a gradient-only
    surrogate; here it is the true value), mean over positives, groups lacking either class
    contributing 0 while still counting in the average over questions, KL of old vs current
    over the batch's tokens (official: k3, verl port: k1), and the defaults delta = 1e-4,
    beta = 1e3, tau = 10 for ``log_l`` (verl's docs recommend tau = 1 for ``l_ratio``).
    Differences: the official code uses binary rewards (==1 / ==0) where we threshold, and its
    penalty term ``sg(beta * max(KL - delta, 0)) * KL`` has half the gradient of the squared
    hinge ``beta * max(KL - delta, 0)^2`` implemented here: the official run with beta = b has
    our gradient with beta = b / 2. Not confirmed from the paper's own text (only its abstract
    and third-party summaries were read): the exact constant in front of the squared hinge
    (we take ``beta * [KL - delta]_+^2``, as the summaries and OpenRLHF's port state it), and
    which KL estimator the paper prescribes.
    """
    if score not in ("log_l", "l_ratio"):
        raise ValueError(f"disco: score must be 'log_l' or 'l_ratio', got {score!r}")
    if kl_estimator not in ("k1", "k3"):
        raise ValueError(f"disco: kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
    if lse and tau <= 0:
        raise ValueError(f"disco: tau must be > 0, got {tau}")
    real = mask.bool()
    log_ratio = torch.where(real, logp - old_logp, torch.zeros_like(logp))
    if score == "log_l":
        scores = _masked_seq_mean(logp, real)
    else:
        scores = _masked_seq_mean(torch.exp(log_ratio), real)

    has_tokens = real.any(-1)
    positive = (rewards > threshold) & has_tokens
    negative = (rewards <= threshold) & has_tokens
    index, n_groups = group_index(group)
    zero = torch.zeros_like(scores)

    def per_group(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(n_groups).index_add(0, index, values)

    n_pos = per_group(positive.to(scores.dtype))
    n_neg = per_group(negative.to(scores.dtype))
    valid = (n_pos > 0) & (n_neg > 0)
    pos_mean = per_group(torch.where(positive, scores, zero)) / n_pos.clamp(min=1)
    if lse:
        z = scores / tau
        with torch.no_grad():  # per-group max for a stable log-sum-exp; any constant works
            top = torch.full((n_groups,), -float("inf"), dtype=z.dtype, device=z.device)
            top = top.scatter_reduce(0, index[negative], z[negative], "amax")
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        shifted = torch.where(negative, z - top[index], zero)  # finite before exp: no NaN grads
        total = per_group(torch.where(negative, torch.exp(shifted), zero))
        total = torch.where(n_neg > 0, total, torch.ones_like(total))
        neg_term = tau * (top + torch.log(total) - torch.log(n_neg.clamp(min=1)))
    else:
        neg_term = per_group(torch.where(negative, scores, zero)) / n_neg.clamp(min=1)
    objective = torch.where(valid, pos_mean - neg_term, torch.zeros_like(pos_mean))

    rho = torch.exp(log_ratio)
    per_token_kl = -log_ratio if kl_estimator == "k1" else rho - 1.0 - log_ratio
    kl = _masked_batch_mean(per_token_kl, real)
    penalty = beta * torch.clamp(kl - delta, min=0.0) ** 2

    row = -objective[index] + penalty  # [B]
    loss = row[:, None] + torch.zeros_like(logp)
    with torch.no_grad():
        shape = logp.shape
        metrics = {
            "score": scores.detach()[:, None].expand(shape).clone(),
            "valid_group": valid[index].to(logp.dtype)[:, None].expand(shape).clone(),
            "kl": kl.detach().expand(shape).clone(),
            "kl_constraint_active": (kl > delta).to(logp.dtype).expand(shape).clone(),
        }
    return loss, metrics
