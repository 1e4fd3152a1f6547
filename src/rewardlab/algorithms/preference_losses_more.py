"""More preference losses: unpaired (KTO), listwise (LiPO-lambda), reference-free contrastive
(CPL) and token-guided pairwise (TGDPO, T-REG).

Every entry is registered in ``PREFERENCE_LOSSES`` (``rewardlab.algorithms.preference_losses``)
and returns ``(loss, metrics)``: ``loss`` is [B], one value per row (an example, a list or a
pair), and ``metrics`` maps names to detached [B] tensors. The trainer averages both over rows.

Batch fields, by the names the trainer provides:

- unpaired (``kto``): ``logp``, ``ref_logp`` [B] (summed completion log-probs), ``label`` [B]
  bool (desirable or not), ``kl`` (scalar: the reference point z0, see ``kto_reference_point``);
- listwise (``lipo``): ``list_logp``, ``list_ref_logp``, ``list_scores`` [B, K] and
  ``list_mask`` [B, K] bool (real list items);
- pairwise sums (``cpl``, ``cpl_kl``): ``chosen_logp``, ``rejected_logp``,
  ``ref_chosen_logp``, ``ref_rejected_logp``, ``chosen_len``, ``rejected_len`` [B];
- pairwise per token (``tgdpo``, ``treg``): ``chosen_token_logp``, ``rejected_token_logp``,
  ``ref_chosen_token_logp``, ``ref_rejected_token_logp``, ``chosen_mask``, ``rejected_mask``
  and ``chosen_token_rewards``, ``rejected_token_rewards`` [B, T] (token rewards from a guidance
  source: see ``dpo_implicit_token_rewards`` for TGDPO and ``treg_token_rewards`` for T-REG).

Padding positions are selected away with ``where`` (never multiplied by 0), so a non-finite
value on padding cannot leak into a row's loss or its gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rewardlab.algorithms.policy_losses import _masked_seq_mean as _masked_mean
from rewardlab.algorithms.preference_losses import (
    PREFERENCE_LOSSES,
    _check_beta,
    _reward_metrics,
)

# --------------------------------------------------------------------------- helpers


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over each row's real tokens ([B, T] -> [B])."""
    real = mask.bool()
    return torch.where(real, values, torch.zeros_like(values)).sum(-1)


def _real_rewards(rewards: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Token rewards, detached, with padding set to 0 so that a non-finite padding reward cannot
    turn a zero gradient into ``0 * nan``."""
    rewards = rewards.detach()
    return torch.where(real, rewards, torch.zeros_like(rewards))


def kto_reference_point(
    logp_mismatched: torch.Tensor, ref_logp_mismatched: torch.Tensor
) -> torch.Tensor:
    """KTO's reference point z0 from mismatched (prompt, completion) pairs: a detached scalar.

    ``z0 = max(0, mean_j (log pi(y'_j | x_j) - log pi_ref(y'_j | x_j)))`` where ``y'_j`` is a
    completion of another example of the batch (TRL pairs each prompt with the previous
    example's completion, i.e. it rotates completions by one within the batch). Both inputs are
    [B] summed completion log-probs of those mismatched pairs, under the policy and the
    reference. The mean is over the micro-batch; TRL additionally averages it over processes
    before clamping (``gather_for_metrics(kl).mean().clamp(min=0)``), which a multi-process
    trainer should do too. The result is detached: no gradient flows through z0 (as in the
    paper, where z0 is a biased batch estimate of KL(pi || pi_ref) and is not backpropagated).
    """
    with torch.no_grad():
        return (logp_mismatched - ref_logp_mismatched).mean().clamp(min=0.0)


def dpo_implicit_token_rewards(
    guide_token_logp: torch.Tensor,
    ref_token_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """Token rewards ``beta * (log pi_guide(y_t) - log pi_ref(y_t))`` of a DPO-trained guide
    model, 0 on padding, detached: the practical guidance TGDPO uses (see ``tgdpo``).

    ``guide_token_logp`` are the per-token log-probs of the completion under the frozen guide
    (e.g. a model trained with DPO on the same data), ``ref_token_logp`` under the reference.
    Pass the same ``beta`` as the ``tgdpo`` loss to reproduce the official code's guidance.
    """
    with torch.no_grad():
        reward = beta * (guide_token_logp - ref_token_logp)
        return torch.where(mask.bool(), reward, torch.zeros_like(reward))


def treg_token_rewards(
    better_token_logp: torch.Tensor,
    worse_token_logp: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """T-REG's self-generated token rewards ``sigmoid(log pi(y_t | x_better, y_<t) -
    log pi(y_t | x_worse, y_<t)) - 0.5`` in [-0.5, 0.5], 0 on padding, detached.

    ``better_token_logp`` / ``worse_token_logp`` are the per-token log-probs of the *same*
    completion scored by one frozen evaluator model (the paper uses the reference model) under
    two contrastive revision prompts: one asking for a better (helpful, correct, coherent,
    concise) response, one asking for a worse one. The prompt wording is the trainer's choice;
    the paper's exact prompts were not read (only a secondary summary of them).
    """
    with torch.no_grad():
        reward = torch.sigmoid(better_token_logp - worse_token_logp) - 0.5
        return torch.where(mask.bool(), reward, torch.zeros_like(reward))


# --------------------------------------------------------------------------- kto


@PREFERENCE_LOSSES.register(
    "kto",
    paper="KTO: Model Alignment as Prospect Theoretic Optimization",
    arxiv="2402.01306",
    formula="L = lambda_D * (1 - sigmoid(beta * (r - z0))) if desirable else "
    "lambda_U * (1 - sigmoid(beta * (z0 - r))), r = logp - ref_logp, z0 = sg(kl)",
)
def kto(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    label: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al., arXiv 2402.01306): unpaired, binary feedback, prospect-theoretic.

    Each row is one (prompt, completion) with a desirable / undesirable label. With the implied
    reward ``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0``, the value is
    ``lambda_D sigmoid(beta (r - z0))`` for a desirable completion and
    ``lambda_U sigmoid(beta (z0 - r))`` for an undesirable one, and the loss per row is
    ``lambda_y - value``, i.e. ``lambda_D (1 - sigmoid(beta (r - z0)))`` or
    ``lambda_U (1 - sigmoid(beta (z0 - r)))``. The batch mean of this [B] loss is exactly TRL's
    ``KTOTrainer`` loss (``losses.nanmean()`` over the concatenated desirable and undesirable
    losses) on the same tensors: checked numerically in the tests against TRL 1.16's
    ``KTOTrainer._compute_loss`` driven with stub model outputs.

    ``kl`` is the reference point z0, used as given and detached: a scalar (or [1]) tensor,
    the batch's estimate of KL(pi || pi_ref) from mismatched pairs, which the trainer computes
    with ``kto_reference_point`` (it clamps at 0, as the paper and TRL do). ``kl = 0`` gives
    exactly TRL's ``loss_type="apo_zero_unpaired"`` (``1 - sigmoid(beta r)`` for desirable,
    ``sigmoid(beta r)`` for undesirable rows), so that is not a separate entry.

    Defaults: ``beta = 0.1`` and both weights 1.0 are TRL's ``KTOConfig`` defaults. The paper
    recommends choosing the weights so that ``lambda_D n_D / (lambda_U n_U)`` lies in [1, 4/3]
    (TRL warns outside that band); that is a data-dependent choice left to the config. Not
    confirmed from the paper's own text (only TRL's implementation and its comments citing
    eq. 7 were read): the paper's beta default for each model size.
    """
    _check_beta("kto", beta)
    logratio = logp - ref_logp
    z0 = torch.as_tensor(kl, dtype=logratio.dtype, device=logratio.device).detach()
    if z0.numel() == 1:
        z0 = z0.reshape(())
    desirable = label.bool()
    desirable_loss = 1.0 - torch.sigmoid(beta * (logratio - z0))
    undesirable_loss = 1.0 - torch.sigmoid(beta * (z0 - logratio))
    loss = torch.where(
        desirable, desirable_weight * desirable_loss, undesirable_weight * undesirable_loss
    )
    with torch.no_grad():
        metrics = {
            "reward": beta * logratio.detach(),
            "kl": z0.expand_as(logratio).clone(),
            "desirable": desirable.to(logratio.dtype),
        }
    return loss, metrics


# --------------------------------------------------------------------------- lipo


def lipo_lambda_weights(
    implicit_rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """LiPO-lambda's pair weights and pair mask ([B, K] -> [B, K, K] each), detached.

    ``delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|`` with gains ``G = 2^score - 1`` and
    discounts ``D(tau) = log2(1 + tau)``, ``tau`` the 1-based rank of each real item by
    ``implicit_rewards`` (descending; ties broken by list position, earlier first; padded items
    are ranked after every real item so they never shift a real item's rank). The pair mask
    selects the ordered pairs (i, j) of real items with ``score_i > score_j``.
    """
    with torch.no_grad():
        real = mask.bool()
        k = implicit_rewards.shape[-1]
        ranking_key = torch.where(
            real, implicit_rewards.detach(), torch.full_like(implicit_rewards, -math.inf)
        )
        order = torch.argsort(ranking_key, dim=-1, descending=True, stable=True)
        positions = torch.arange(1, k + 1, device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        inv_discount = 1.0 / torch.log2(1.0 + rank.to(implicit_rewards.dtype))
        safe_scores = torch.where(real, scores.to(implicit_rewards.dtype), 0.0)
        gain = torch.pow(2.0, safe_scores) - 1.0
        weight = (gain[..., :, None] - gain[..., None, :]).abs() * (
            inv_discount[..., :, None] - inv_discount[..., None, :]
        ).abs()
        pairs = (
            real[..., :, None]
            & real[..., None, :]
            & (safe_scores[..., :, None] > safe_scores[..., None, :])
        )
        return weight, pairs


@PREFERENCE_LOSSES.register(
    "lipo",
    paper="LiPO: Listwise Preference Optimization through Learning-to-Rank (LiPO-lambda)",
    arxiv="2402.01878",
    formula="L = sum_{i,j real: psi_i > psi_j} delta_ij * -log sigmoid(s_i - s_j), "
    "s = beta * (list_logp - list_ref_logp), delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, "
    "G = 2^psi - 1, D(tau) = log2(1 + tau), tau = rank by s (descending)",
)
def lipo(
    list_logp: torch.Tensor,
    list_ref_logp: torch.Tensor,
    list_scores: torch.Tensor,
    list_mask: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LiPO-lambda (Liu et al., arXiv 2402.01878): a LambdaLoss listwise objective over a list
    of K responses to one prompt, each with a label score ``psi`` (``list_scores``).

    The implicit reward of each response is ``s_i = beta log(pi(y_i|x) / pi_ref(y_i|x))``; every
    ordered pair of real items with ``psi_i > psi_j`` contributes the pairwise logistic loss
    ``-log sigmoid(s_i - s_j)``, weighted by the lambda weight
    ``delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``: gains ``G = 2^psi - 1`` from the
    labels, discounts ``D(tau) = log2(1 + tau)`` from each item's 1-based rank under the current
    implicit rewards. The weights are constants (detached; ranks are piecewise constant).
    The row loss is the *sum* over pairs (the paper's formula; no normalization by the number of
    pairs or by an ideal DCG). Items with ``list_mask`` False take part in nothing: no pairs,
    no effect on the ranks of real items, and (selected away) no gradient even if their
    log-probs are non-finite. Label ties form no pair. A list with no valid pair has loss 0.

    K = 2 (derived, and tested): the two real items always hold ranks 1 and 2, whichever
    order the model puts them in, so the discount factor is the constant ``1 - 1/log2(3)``
    and ``L = (2^psi_w - 2^psi_l) (1 - 1/log2 3) * -log sigmoid(beta (r_w - r_l))``, i.e. the
    DPO loss with ``r = logp - ref_logp``, scaled by a per-pair constant.

    Defaults / not confirmed: ``beta = 0.1`` follows DPO convention; the paper's beta, its
    label scale (``G = 2^psi - 1`` grows fast, so scores should be small, e.g. in [0, 1]; how the
    paper maps its ranking model's outputs to psi was not read), the log base of D (log2, as in
    LambdaLoss / NDCG) and the absence of a normalization were taken from a secondary
    description of the paper's formula, not from its text.
    """
    _check_beta("lipo", beta)
    real = list_mask.bool()
    s = beta * (list_logp - list_ref_logp)
    s = torch.where(real, s, torch.zeros_like(s))
    weight, pairs = lipo_lambda_weights(s, list_scores, real)
    diff = s[..., :, None] - s[..., None, :]
    pair_loss = -F.logsigmoid(diff)
    loss = torch.where(pairs, weight * pair_loss, torch.zeros_like(pair_loss)).sum((-2, -1))
    with torch.no_grad():
        n_pairs = pairs.sum((-2, -1)).to(s.dtype)
        correct = (pairs & (diff.detach() > 0)).sum((-2, -1)).to(s.dtype)
        metrics = {
            "num_pairs": n_pairs,
            "pair_accuracy": correct / n_pairs.clamp(min=1),
            "lambda_weight_sum": torch.where(pairs, weight, 0.0).sum((-2, -1)),
            "implicit_reward_mean": _masked_mean(s.detach(), real),
        }
    return loss, metrics


# --------------------------------------------------------------------------- cpl


def _cpl(
    chosen_adv: torch.Tensor,
    rejected_adv: torch.Tensor,
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    contrastive_bias: float,
    bc_coeff: float,
    bc_chosen_only: bool,
    name: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if not 0.0 < contrastive_bias <= 1.0:  # the official code asserts the same range
        raise ValueError(f"{name}: contrastive_bias must be in (0, 1], got {contrastive_bias}")
    logits = chosen_adv - contrastive_bias * rejected_adv
    contrastive = -F.logsigmoid(logits)
    if bc_chosen_only:
        bc = -chosen_logp / chosen_len.clamp(min=1).to(chosen_logp.dtype)
    else:
        total_len = (chosen_len + rejected_len).clamp(min=1).to(chosen_logp.dtype)
        bc = -(chosen_logp + rejected_logp) / total_len
    loss = contrastive + bc_coeff * bc if bc_coeff else contrastive
    with torch.no_grad():
        metrics = _reward_metrics(chosen_adv, rejected_adv)
        metrics["contrastive_loss"] = contrastive.detach()
        metrics["bc_loss"] = bc.detach()
    return loss, metrics


@PREFERENCE_LOSSES.register(
    "cpl",
    paper="Contrastive Preference Learning: Learning from Human Feedback without RL",
    arxiv="2310.13639",
    formula="L = -log sigmoid(alpha * logp_w - lambda * alpha * logp_l) + c_bc * L_bc, "
    "L_bc = -(logp_w + logp_l) / (len_w + len_l)",
)
def cpl(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    alpha: float = 0.1,
    contrastive_bias: float = 0.5,
    bc_coeff: float = 0.0,
    bc_chosen_only: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CPL (Hejna et al., arXiv 2310.13639): preferences follow the regret (summed optimal
    advantage) of a segment, and in maximum-entropy RL the optimal advantage is
    ``alpha log pi*(a|s)``, so a Bradley-Terry model over segment sums of ``alpha log pi``
    learns the policy directly, with no reward model, no RL and **no reference model**.

    Per pair: ``-log sigmoid(alpha S_w - lambda alpha S_l)`` with ``S = sum_t log pi(a_t|s_t)``
    the completion's summed log-prob (``chosen_logp`` / ``rejected_logp``) and ``lambda`` the
    conservative ``contrastive_bias`` in (0, 1]: lambda < 1 down-weights the rejected segment,
    the paper's CPL(lambda) regularizer that makes the loss prefer in-distribution (higher
    likelihood) actions; lambda = 1 is the plain contrastive loss, i.e. reference-free DPO
    with beta = alpha. Optional behaviour cloning, as in the official code: ``bc_coeff`` times
    the token-mean negative log-likelihood over both completions (over the chosen one only
    with ``bc_chosen_only``); the official code also pretrains with BC alone (``bc_steps``),
    which is a schedule for the trainer, not part of this loss.

    Confirmed from the official code (jhejna/cpl, ``research/algs/cpl.py``): the biased logit
    ``adv_w - bias * adv_l`` with ``adv = alpha * sum log pi`` (an undiscounted segment sum),
    the assertion ``0 < bias <= 1``, and the configs' values alpha = 0.1 with
    ``contrastive_bias = 0.5`` / ``bc_coeff = 0`` ("CPL") or ``contrastive_bias = 1`` /
    ``bc_coeff = 1`` ("CPL (BC)"); the defaults here are the former. Not confirmed: the paper's
    discount gamma (its text writes ``gamma^t``; the code sums without one, as here), and any
    LLM-scale setting: the paper's experiments are robot-control segments of 64 steps, and with
    completion log-prob sums of hundreds of nats the logits saturate at alpha = 0.1, so tune
    alpha (or use length-normalized log-probs) for language models. The BC term's batch
    weighting is per row here (each row's token mean), the code's is a token mean over the
    whole batch of fixed-length segments.
    """
    return _cpl(
        alpha * chosen_logp,
        alpha * rejected_logp,
        chosen_logp,
        rejected_logp,
        chosen_len,
        rejected_len,
        contrastive_bias,
        bc_coeff,
        bc_chosen_only,
        "cpl",
    )


@PREFERENCE_LOSSES.register(
    "cpl_kl",
    paper="Contrastive Preference Learning: Learning from Human Feedback without RL "
    "(KL-regularized variant of the official code)",
    arxiv="2310.13639",
    formula="L = -log sigmoid(alpha * r_w - lambda * alpha * r_l) + c_bc * L_bc, "
    "r = logp - ref_logp, L_bc = -(logp_w + logp_l) / (len_w + len_l)",
)
def cpl_kl(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    alpha: float = 0.1,
    contrastive_bias: float = 0.5,
    bc_coeff: float = 0.0,
    bc_chosen_only: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CPL with a reference policy: the advantage is ``alpha log(pi / pi_ref)`` (KL-regularized
    rather than entropy-regularized RL), otherwise exactly ``cpl``.

    This is the official code's ``CPL_KL`` class (jhejna/cpl, ``research/algs/cpl_kl.py``),
    whose reference is a frozen copy of the policy after the BC pretraining phase. With
    ``contrastive_bias = 1`` and ``bc_coeff = 0`` it is DPO with beta = alpha; lambda < 1 is a
    conservative DPO that shrinks the rejected log-ratio's weight. Not confirmed: whether the
    paper's text presents this variant (only the code was read); the defaults are copied from
    ``cpl``, not from a CPL_KL config.
    """
    return _cpl(
        alpha * (chosen_logp - ref_chosen_logp),
        alpha * (rejected_logp - ref_rejected_logp),
        chosen_logp,
        rejected_logp,
        chosen_len,
        rejected_len,
        contrastive_bias,
        bc_coeff,
        bc_chosen_only,
        "cpl_kl",
    )


# --------------------------------------------------------------------------- tgdpo


@PREFERENCE_LOSSES.register(
    "tgdpo",
    paper="TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference "
    "Optimization",
    arxiv="2506.14574",
    formula="L = -log sigmoid(sum_t beta (1 + alpha rhat_w,t) d_w,t - "
    "sum_t beta (1 - alpha rhat_l,t) d_l,t), d_t = logp_t - ref_logp_t, rhat = sg(token rewards)",
)
def tgdpo(
    chosen_token_logp: torch.Tensor,
    rejected_token_logp: torch.Tensor,
    ref_chosen_token_logp: torch.Tensor,
    ref_rejected_token_logp: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_token_rewards: torch.Tensor,
    rejected_token_rewards: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TGDPO (Zhu et al., ICML 2025, arXiv 2506.14574): DPO whose constant beta becomes a
    per-token coefficient shaped by a token-level reward, so tokens deviate from the reference
    according to their reward.

    With per-token log-ratios ``d_t = log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t)`` and token
    rewards ``rhat_t`` (detached), the margin is
    ``sum_t beta (1 + alpha rhat_w,t) d_w,t - sum_t beta (1 - alpha rhat_l,t) d_l,t`` over the
    real tokens and the loss is ``-log sigmoid(margin)``. A chosen token with a high reward
    gets a larger coefficient (pushed further up); a rejected token with a low (negative)
    reward gets a larger coefficient (pushed further down).

    Token rewards (``chosen_token_rewards`` / ``rejected_token_rewards``): the paper's practical
    guidance is the induced token reward of a DPO-trained model,
    ``rhat_t = beta (log pi_dpo(y_t) - log pi_ref(y_t))`` (``dpo_implicit_token_rewards``, same
    beta); its README also allows a SimPO-trained model or any off-the-shelf token-level reward
    model. The trainer computes them with the frozen guide model and passes them in.

    Reductions (derived, and tested): zero token rewards, or ``alpha = 0``, give exactly DPO
    with the same beta. Constant token rewards ``c`` do NOT give DPO: they give
    ``-log sigmoid(beta (1 + alpha c) r_w - beta (1 - alpha c) r_l)`` with ``r`` the summed
    log-ratios, a DPO with different betas for the chosen and rejected responses.

    Confirmed from the official code (dvlab-research/TGDPO, ``src/llamafactory/train/tgdpo/
    trainer.py``, the ``sigmoid`` branch, which receives masked per-token log-probs): the
    coefficients ``beta (1 + alpha beta log(pi_rm / pi_ref))`` for chosen and
    ``beta (1 - alpha beta log(pi_rm / pi_ref))`` for rejected tokens, the sums over tokens, and
    ``pref_beta = 0.1``, ``tgdpo_alpha = 0.5`` in its example config (the defaults here). The
    coefficients are not clipped there, nor here: ``alpha |rhat| > 1`` flips a token's sign
    (the metrics report the smallest coefficient). Not confirmed from the paper's text (only
    its abstract and a secondary summary were read): the general form of its guidance function
    f and whether this 1 +/- alpha rhat choice is its main or only practical instance.
    """
    _check_beta("tgdpo", beta)
    chosen_real, rejected_real = chosen_mask.bool(), rejected_mask.bool()
    chosen_reward = _real_rewards(chosen_token_rewards, chosen_real)
    rejected_reward = _real_rewards(rejected_token_rewards, rejected_real)
    chosen_coef = beta * (1.0 + alpha * chosen_reward)
    rejected_coef = beta * (1.0 - alpha * rejected_reward)
    chosen_term = _masked_sum(
        chosen_coef * (chosen_token_logp - ref_chosen_token_logp), chosen_real
    )
    rejected_term = _masked_sum(
        rejected_coef * (rejected_token_logp - ref_rejected_token_logp), rejected_real
    )
    margin = chosen_term - rejected_term
    loss = -F.logsigmoid(margin)
    with torch.no_grad():
        min_coef = torch.minimum(
            torch.where(chosen_real, chosen_coef, math.inf).amin(-1),
            torch.where(rejected_real, rejected_coef, math.inf).amin(-1),
        )
        metrics = _reward_metrics(chosen_term, rejected_term)
        metrics["chosen_coef_mean"] = _masked_mean(chosen_coef, chosen_real)
        metrics["rejected_coef_mean"] = _masked_mean(rejected_coef, rejected_real)
        metrics["min_coef"] = min_coef
    return loss, metrics


# --------------------------------------------------------------------------- treg


@PREFERENCE_LOSSES.register(
    "treg",
    paper="T-REG: Preference Optimization with Token-Level Reward Regularization",
    arxiv="2412.02685",
    formula="L = -log sigmoid(m) + alpha * sg(sigmoid(-m)) * (R_w + R_l), "
    "m = beta * (sum_t d_w,t - sum_t d_l,t), R = -sum_t beta * rhat_t * d_t, "
    "d_t = logp_t - ref_logp_t",
)
def treg(
    chosen_token_logp: torch.Tensor,
    rejected_token_logp: torch.Tensor,
    ref_chosen_token_logp: torch.Tensor,
    ref_rejected_token_logp: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_token_rewards: torch.Tensor,
    rejected_token_rewards: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.25,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """T-REG (Zhou et al., ACL 2025, arXiv 2412.02685): DPO plus a regularizer that aligns
    DPO's implicit token rewards ``beta log(pi / pi_ref)`` with self-generated token rewards.

    ``L = L_DPO + alpha * w * (R(y_w) + R(y_l))`` with the DPO margin
    ``m = beta (sum_t d_w,t - sum_t d_l,t)``, ``d_t = logp_t - ref_logp_t``, the sequence weight
    ``w = sg(sigmoid(-m)) = sg(sigmoid(r_l - r_w))`` (the factor in DPO's own gradient, so the
    regularizer matters most where DPO has not yet separated the pair) and the regularizer
    ``R(y) = -sum_t beta rhat_t d_t`` over the real tokens: minimizing it maximizes the
    agreement ``sum_t (beta d_t) rhat_t`` between the implicit token reward and the token reward
    ``rhat`` (detached), i.e. raises tokens with positive rhat and lowers tokens with negative
    rhat, in both the chosen and the rejected response. ``alpha = 0`` is exactly DPO.

    Token rewards: the paper's are self-generated by contrastive prompting,
    ``rhat_t = sigmoid(log pi(y_t | x_better) - log pi(y_t | x_worse)) - 0.5`` scored by the
    reference model (``treg_token_rewards``); its ablation also regularizes with a DPO model's
    implicit token rewards (worse on Arena-Hard). The trainer computes them and passes them in.

    Confirmed only from a secondary summary of the paper (a paper-notes page; the paper and
    its code were not read): the overall form ``L_DPO + alpha w (L_REG(y_w) + L_REG(y_l))``,
    ``w = sigmoid(r_DPO(y_l) - r_DPO(y_w))``, ``L_REG = -sum_t beta rhat_t log pi(y_t|...)``,
    the reward formula above and alpha searched over {0.1, 0.25, 0.5} (the default 0.25 is the
    middle of that grid, not a confirmed choice). Choices made here, not confirmed: ``w`` is
    detached; ``R`` uses the log-ratio ``d_t`` rather than ``log pi`` (the gradient is the same,
    the value differs by the constant ``sum_t beta rhat_t log pi_ref``, so R = 0 at the
    reference); the regularizer is a sum over tokens, not a mean; ``beta = 0.1`` is DPO's
    usual value.
    """
    _check_beta("treg", beta)
    chosen_real, rejected_real = chosen_mask.bool(), rejected_mask.bool()
    chosen_d = chosen_token_logp - ref_chosen_token_logp
    rejected_d = rejected_token_logp - ref_rejected_token_logp
    chosen_reward = beta * _masked_sum(chosen_d, chosen_real)
    rejected_reward = beta * _masked_sum(rejected_d, rejected_real)
    margin = chosen_reward - rejected_reward
    dpo_loss = -F.logsigmoid(margin)
    chosen_rhat = _real_rewards(chosen_token_rewards, chosen_real)
    rejected_rhat = _real_rewards(rejected_token_rewards, rejected_real)
    reg_chosen = -_masked_sum(beta * chosen_rhat * chosen_d, chosen_real)
    reg_rejected = -_masked_sum(beta * rejected_rhat * rejected_d, rejected_real)
    seq_weight = torch.sigmoid(-margin).detach()
    reg = reg_chosen + reg_rejected
    loss = dpo_loss + alpha * seq_weight * reg if alpha else dpo_loss
    with torch.no_grad():
        metrics = _reward_metrics(chosen_reward, rejected_reward)
        metrics["dpo_loss"] = dpo_loss.detach()
        metrics["reg_loss"] = reg.detach()
        metrics["seq_weight"] = seq_weight
    return loss, metrics
