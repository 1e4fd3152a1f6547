"""Preference losses of online, iterative and Nash (general-preference) methods: XPO, SELM,
SPPO, INPO and Nash-MD.

Every entry is registered in ``PREFERENCE_LOSSES`` (``rewardlab.algorithms.preference_losses``)
and returns ``(loss, metrics)``: ``loss`` is [B], one value per row, and ``metrics`` maps names to
detached [B] tensors. The trainer sums the rows and divides by the number of rows in the batch.

Batch fields, by the names the trainer provides (log-probs are summed over completion tokens):

- pairwise (``xpo``, ``selm``, ``inpo``): ``chosen_logp``, ``rejected_logp`` (policy, with grad)
  and ``ref_chosen_logp``, ``ref_rejected_logp`` (reference pi_ref, detached), as in
  ``preference_losses``; ``xpo`` adds ``chosen_from_reference`` / ``rejected_from_reference``
  (bool [B]: that completion was sampled from pi_ref); ``inpo`` adds ``anchor_chosen_logp`` /
  ``anchor_rejected_logp`` (detached log-probs under the previous iterate pi_t);
- unpaired, one row per completion (``sppo``, ``nash_md``): ``logp`` (policy, with grad),
  ``ref_logp`` (detached; the previous iterate pi_t for ``sppo``, pi_ref for ``nash_md``) and a
  detached probability in [0, 1]: ``win_rate`` (``sppo``: estimated P(y beats pi_t | x)) or
  ``preference`` (``nash_md``: P(y beats y'), y' drawn from the policy / reference mixture).

Probabilities (``win_rate``, ``preference``) are detached here: they are labels, not functions
of the parameters being trained.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.preference_losses import (
    PREFERENCE_LOSSES,
    Metrics,
    _check_beta,
    _log_ratios,
    _reward_metrics,
    dpo,
)


def _check_nonnegative(name: str, param: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name}: {param} must be >= 0, got {value}")


def _label(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A detached probability label in the dtype of ``like``."""
    return values.detach().to(like.dtype)


# --------------------------------------------------------------------------- xpo


@PREFERENCE_LOSSES.register(
    "xpo",
    paper="Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for "
    "Sample-Efficient RLHF",
    arxiv="2405.21046",
    formula="L = -log sigmoid(beta * h) + alpha * (1[w ~ pi_ref] * logp_w + 1[l ~ pi_ref] * logp_l),"
    " h = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)",
)
def xpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    chosen_from_reference: torch.Tensor,
    rejected_from_reference: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1e-5,
) -> tuple[torch.Tensor, Metrics]:
    """XPO (Xie, Foster, Krishnamurthy, Rosset, Awadallah, Rakhlin; arXiv 2405.21046): online
    DPO plus an exploration bonus. Each pair has one completion sampled from the policy and one
    from the reference; the loss adds ``alpha * log pi(y~)`` for the completion ``y~`` sampled
    from pi_ref. Minimizing it lowers the policy's likelihood of what the reference would say,
    which is the paper's optimism (the policy is pushed to put mass outside pi_ref's support).

    Here the two flags say which side came from pi_ref: one (the paper's and TRL's setting),
    both (each adds its own term) or neither (plain DPO). ``dL/dlogp`` of a reference-sampled
    side is therefore DPO's gradient plus ``alpha``.

    Source: TRL's ``XPOTrainer._compute_losses`` (``trl/experimental/xpo/xpo_trainer.py``, TRL
    main; the trainer is not in the installed TRL 1.16): ``-logsigmoid(beta * logits) + alpha *
    model_logprobs_ref_data_sum`` with summed log-probs, and the same term in sail-sg/oat's
    ``XPOLearner``. Defaults: ``beta = 0.1`` (TRL's ``OnlineDPOConfig``) and ``alpha = 1e-5``
    (TRL's ``XPOConfig``; oat uses 5e-6). TRL also accepts an epoch schedule for ``alpha`` and
    an IPO base loss; this entry is the sigmoid base with a constant ``alpha`` (a schedule is the
    trainer's business). Not confirmed from the paper's own text (only the TRL and oat code were
    read): the exact statement of Algorithm 1 and the paper's alpha for its experiments.
    """
    _check_beta("xpo", beta)
    _check_nonnegative("xpo", "alpha", alpha)
    dpo_loss, metrics = dpo(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=beta
    )
    zero = torch.zeros_like(chosen_logp)
    # where (not a multiplication by a 0/1 mask): a non-finite log-prob of a side that was not
    # sampled from the reference cannot leak into the bonus or its gradient
    from_reference_logp = torch.where(
        chosen_from_reference.bool(), chosen_logp, zero
    ) + torch.where(rejected_from_reference.bool(), rejected_logp, zero)
    exploration = alpha * from_reference_logp
    metrics["dpo_loss"] = dpo_loss.detach()
    metrics["exploration_term"] = exploration.detach()
    return dpo_loss + exploration, metrics


# --------------------------------------------------------------------------- selm


@PREFERENCE_LOSSES.register(
    "selm",
    paper="Self-Exploring Language Models: Active Preference Elicitation for Online Alignment",
    arxiv="2405.19332",
    formula="L = -log sigmoid(beta * h) + alpha * beta * ((logp_w - ref_logp_w) + "
    "(logp_l - ref_logp_l)) / 2, h = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)",
)
def selm(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.001,
) -> tuple[torch.Tensor, Metrics]:
    """SELM (Zhang et al., arXiv 2405.19332): DPO plus an optimism term. The paper biases the
    reward-fitting objective by ``alpha * max_y r(x, y)``; with DPO's reparameterized reward this
    becomes, as we understand its final objective, ``L_DPO + alpha * beta * E_{y ~ pi_ref}[log
    pi(y|x)]``, which lowers the policy's likelihood of pi_ref's own responses (an exploration
    push; its expected gradient equals that of ``-alpha * beta * KL(pi_ref || pi)``).

    Here the expectation over ``y ~ pi_ref`` is estimated on the pair itself: the mean of the two
    completions' log-ratios ``log pi(y)/pi_ref(y)`` (subtracting the detached ``log pi_ref``
    shifts the value by a constant and leaves the gradient unchanged; it is the form the
    authors' code uses). So each side's log-prob gets an extra gradient of ``+alpha * beta / 2``.
    This is an unbiased estimate only when both completions were sampled from pi_ref, which is
    SELM's iterative setting (pi_ref is the previous iterate that generated the pair). On
    on-policy pairs (sampled from the current pi) the term's expected gradient is zero.

    Differences from the authors' code (shenao-zhang/SELM, ``scripts/selm_trainer.py``,
    ``optimistic_dpo_loss``: ``-logsigmoid(beta * logits) + alpha * beta * response_logratios``):
    there the optimism term is evaluated on a third completion, the reference model's greedy
    response, while chosen / rejected are picked by a ranker among that response and two dataset
    responses. The fixed pairwise fields of this entry carry no third completion; a trainer that
    has one should add the term itself. Defaults: ``alpha = 0.001`` is the authors' Zephyr recipe
    (``recipes/zephyr-selm/selm_config_full.yaml``; their Phi-3 / Llama-3 recipe uses 1e-4);
    ``beta = 0.1`` follows this library's DPO default (the recipes use 0.01). Not confirmed: the
    paper's section 4 text was not readable here, so the objective above is from the authors'
    code and our derivation, not quoted from the paper; the paper's defaults were not checked.
    """
    _check_beta("selm", beta)
    _check_nonnegative("selm", "alpha", alpha)
    dpo_loss, metrics = dpo(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=beta
    )
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    optimism = alpha * beta * 0.5 * (chosen_lr + rejected_lr)
    metrics["dpo_loss"] = dpo_loss.detach()
    metrics["optimism_term"] = optimism.detach()
    return dpo_loss + optimism, metrics


# --------------------------------------------------------------------------- sppo


@PREFERENCE_LOSSES.register(
    "sppo",
    paper="Self-Play Preference Optimization for Language Model Alignment",
    arxiv="2405.00675",
    formula="L = (logp - ref_logp - eta * (win_rate - 1/2))^2, ref = the previous iterate pi_t",
)
def sppo(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    win_rate: torch.Tensor,
    *,
    eta: float = 1000.0,
) -> tuple[torch.Tensor, Metrics]:
    """SPPO (Wu, Sun, Yuan, Ji, Yang, Gu; arXiv 2405.00675) with estimated win rates, one row
    per completion ``y`` sampled from the previous iterate pi_t: regress ``log pi(y)/pi_t(y)``
    onto ``eta * (P(y beats pi_t | x) - 1/2)``. This is the multiplicative-weights step
    ``pi_{t+1}(y) ~ pi_t(y) exp(eta P(y beats pi_t))`` with the log-partition approximated by
    ``eta / 2``. ``ref_logp`` must be pi_t's log-prob (the anchor moves every iteration);
    ``win_rate`` is, in the paper, the mean PairRM probability of ``y`` against K samples of pi_t.
    The loss and its gradient are zero exactly at ``log pi/pi_t = eta (w - 1/2)``.

    Parameterization: the step size is ``eta`` as in the paper's update. The authors' code
    (uclaml/SPPO, ``sppo/trainer.py``, ``loss_type="sppo"``) writes it as ``1 / beta`` with
    ``beta = 0.001`` (``scripts/pipeline.sh``), so the default here is ``eta = 1000``. Their
    loss is per pair, ``(loss_w + loss_l) / 2`` over the chosen and rejected completion with
    their own win rates; this unpaired entry gives each completion its own row, so a pair's two
    rows sum to twice that value. With hard win rates (1 for chosen, 0 for rejected) the two
    rows sum to ``sppo_hard`` with ``beta = 1 / eta`` (tested). Not confirmed from the paper's
    own text (the code was read, the paper's equations and experiment settings were not).
    """
    if eta <= 0:
        raise ValueError(f"sppo: eta must be > 0, got {eta}")
    log_ratio = logp - ref_logp
    target = eta * (_label(win_rate, log_ratio) - 0.5)
    loss = (log_ratio - target) ** 2
    with torch.no_grad():
        metrics = {
            "log_ratio": log_ratio.detach(),
            "target": target,
            "win_rate": _label(win_rate, log_ratio),
        }
    return loss, metrics


# --------------------------------------------------------------------------- inpo


@PREFERENCE_LOSSES.register(
    "inpo",
    paper="Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via "
    "No-Regret Learning",
    arxiv="2407.00617",
    formula="L = (h - eta/2)^2, h = (logp_w - logp_l) - eta*tau * (ref_logp_w - ref_logp_l) "
    "- (1 - eta*tau) * (anchor_logp_w - anchor_logp_l), anchor = the previous iterate pi_t",
)
def inpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    anchor_chosen_logp: torch.Tensor,
    anchor_rejected_logp: torch.Tensor,
    *,
    eta: float = 1.0 / 0.0075,
    tau: float = 0.0025,
) -> tuple[torch.Tensor, Metrics]:
    """INPO (Zhang et al., arXiv 2407.00617): online mirror descent on the KL-regularized
    preference game, ``pi_{t+1} ~ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y beats pi_t))``
    with learning rate ``eta`` and KL strength ``tau``, fitted without win-rate estimates by an
    IPO-like squared loss on each (winner, loser) pair sampled from pi_t. Writing the geometric
    mixture anchor ``a(y) = eta tau log pi_ref(y) + (1 - eta tau) log pi_t(y)``,
    ``h = [log pi(y_w) - a(y_w)] - [log pi(y_l) - a(y_l)]`` and ``L = (h - eta/2)^2``.

    Limits (tested): with pi_t = pi_ref (or ``eta tau = 1``) the anchor is pi_ref and the loss
    is sequence-level IPO, ``ipo(beta = 1/eta, length_normalize=False)``; with ``tau = 0`` it is
    the same IPO loss anchored at pi_t alone. The gradient is zero at ``h = eta/2``. Reported
    rewards are ``(log pi - a) / eta`` per side, so the margin's target is 1/2.

    ``eta tau`` must lie in [0, 1] (the mixture weights of the anchor). Defaults ``eta = 1/0.0075
    ~ 133.3`` and ``tau = 0.0025`` (``eta tau = 1/3``): third-party reimplementations write
    the loss with ``beta = 1/eta`` as ``(h - 1/(2 beta))^2`` with anchor weights ``tau/beta`` and
    ``1 - tau/beta``, which is exactly the formula above, and use ``beta = 0.0075``,
    ``tau/beta = 1/3``; one of them labels these the paper's defaults. Not confirmed: the
    paper's text was not readable here, so neither the formula nor the defaults are quoted from
    the paper (the formula agrees with the recalled form and with those reimplementations).
    """
    if eta <= 0:
        raise ValueError(f"inpo: eta must be > 0, got {eta}")
    _check_nonnegative("inpo", "tau", tau)
    mix = eta * tau
    if mix > 1.0:
        raise ValueError(f"inpo: eta * tau must be in [0, 1], got {mix}")
    anchor_chosen = mix * ref_chosen_logp + (1.0 - mix) * anchor_chosen_logp
    anchor_rejected = mix * ref_rejected_logp + (1.0 - mix) * anchor_rejected_logp
    chosen_lr, rejected_lr = _log_ratios(chosen_logp, rejected_logp, anchor_chosen, anchor_rejected)
    margin = chosen_lr - rejected_lr
    loss = (margin - 0.5 * eta) ** 2
    metrics = _reward_metrics(chosen_lr / eta, rejected_lr / eta)
    metrics["inpo_margin"] = margin.detach()
    return loss, metrics


# --------------------------------------------------------------------------- nash-md


@PREFERENCE_LOSSES.register(
    "nash_md",
    paper="Nash Learning from Human Feedback (Nash-MD, policy-gradient form)",
    arxiv="2312.00886",
    formula="L = -(p - 1/2) * logp + beta * sg(logp - ref_logp) * logp; "
    "dL/dlogp = -(p - 1/2) + beta * (logp - ref_logp)",
)
def nash_md(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    preference: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Nash-MD as a policy gradient (Munos et al., arXiv 2312.00886), in the form of TRL's
    ``NashMDTrainer``: one row per completion ``y ~ pi``, compared by a preference model with
    ``y'`` drawn from a geometric mixture of pi and pi_ref (the mixture only affects sampling,
    so its coefficient is not a parameter here). The surrogate's gradient is REINFORCE with the
    constant baseline 1/2 on the preference plus ``beta`` times the score-function gradient of
    ``KL(pi || pi_ref)``: ``[-(p - 1/2) + beta * (log pi(y) - log pi_ref(y))] * grad log pi(y)``.
    ``E_{y~pi}[(log pi/pi_ref) grad log pi] = grad KL(pi || pi_ref)`` exactly (tested on a small
    categorical policy), so for on-policy ``y`` the KL part is unbiased. The loss value itself
    is a surrogate (only its gradient is meaningful), as in TRL.

    How TRL treats the KL term (``trl/experimental/nash_md/nash_md_trainer.py``,
    ``_compute_losses``, TRL main; not in the installed TRL 1.16): per token,
    ``sum_t sg(log pi(y_t) - log pi_ref(y_t)) * log pi(y_t)``, i.e. each token's log-prob is
    weighted by its own log-ratio only. With only summed log-probs, this entry uses the
    sequence-level weight ``sg(sum_t log-ratio)`` for every token, which is the exact score-
    function gradient of the sequence KL; the two coincide for one-token completions (tested)
    and differ otherwise. The preference part is identical to TRL's
    ``-(probability - 0.5) * sum_t log pi(y_t)``. Metrics: ``kl`` (the one-sample estimate
    ``log pi(y)/pi_ref(y)``), ``preference`` and ``advantage = (p - 1/2) - beta * kl`` (the
    gradient on ``logp`` is ``-advantage``).

    ``beta`` is TRL's name for the KL coefficient (default 0.1, TRL's ``OnlineDPOConfig``, which
    ``NashMDConfig`` inherits); the paper calls the KL coefficient tau and uses beta for the
    mixture. Not confirmed from the paper's own text: its exact Nash-MD-PG estimator (the form
    above is TRL's) and its regularization constants.
    """
    _check_beta("nash_md", beta)
    kl = (logp - ref_logp).detach()
    p = _label(preference, logp)
    loss = beta * kl * logp - (p - 0.5) * logp
    with torch.no_grad():
        metrics = {"kl": kl, "preference": p, "advantage": (p - 0.5) - beta * kl}
    return loss, metrics
