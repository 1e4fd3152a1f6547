"""Preference losses: one row per (chosen, rejected) pair -> loss per pair (+ metrics).

Batch fields (each a float tensor [B], one row per pair), named by convention:

- ``chosen_logp`` / ``rejected_logp``: the policy's summed token log-probs of the chosen /
  rejected completion (with grad);
- ``ref_chosen_logp`` / ``ref_rejected_logp``: the reference model's, detached (losses that are
  reference-free simply do not take them);
- ``chosen_len`` / ``rejected_len``: the number of completion tokens, as floats.

Every entry returns ``(loss, metrics)``: ``loss`` is [B], one value per pair, which the trainer
sums and divides by the number of pairs in the whole batch (so micro-batch accumulation is
exact); ``metrics`` maps names to detached [B] values that the trainer averages over pairs.
Losses with an implicit reward report ``chosen_reward``, ``rejected_reward``,
``reward_margin`` (chosen minus rejected) and ``reward_accuracy`` (margin > 0).

Where TRL (``DPOTrainer`` / ``CPOTrainer`` / ``ORPOTrainer``) has the same loss, the formula,
parameter names and defaults follow it, and tests/test_preference_losses.py checks the numbers
against the installed TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rewardlab.registry import Registry

PREFERENCE_LOSSES = Registry("preference_loss")

Metrics = dict[str, torch.Tensor]

# Largest exponent an f-DPO score may take: exp(80) ~ 5.5e34 is still finite in float32, so the
# score saturates (with zero gradient) instead of overflowing to inf and giving inf * 0 = nan.
# TRL clamps its alpha-divergence exponent at the same value for float32.
_MAX_EXPONENT = 80.0


# --------------------------------------------------------------------------- shared helpers


def _log_ratios(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(y)/pi_ref(y)`` of the chosen and of the rejected completion."""
    return chosen_logp - ref_chosen_logp, rejected_logp - ref_rejected_logp


def _per_token(logp: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """A summed log-prob divided by its completion length (an empty completion counts as 1
    token, as TRL's ``clamp(min=1)``)."""
    return logp / length.clamp(min=1.0)


def _nll(chosen_logp: torch.Tensor, chosen_len: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen completion, ``-log pi(y_w) / |y_w|``."""
    return -_per_token(chosen_logp, chosen_len)


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``: the logistic (Bradley-Terry) loss
    with the preference label flipped with probability ``eps`` (``eps = 0`` is ``-log sigmoid``)."""
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate on both sides of -log 2 (Maechler's split)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _reward_metrics(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> Metrics:
    """The implicit rewards of the two completions, their margin and whether it is positive."""
    chosen = chosen_reward.detach()
    rejected = rejected_reward.detach()
    margin = chosen - rejected
    return {
        "chosen_reward": chosen,
        "rejected_reward": rejected,
        "reward_margin": margin,
        "reward_accuracy": (margin > 0).to(margin.dtype),
    }


def _check_beta(name: str, beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")


def _check_smoothing(name: str, value: float, *, high: float, open_low: bool = False) -> None:
    """``value`` in [0, high) (or (0, high) when ``open_low``)."""
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value < high):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name}: label_smoothing must be in {bracket}0, {high}), got {value}")


_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def _f_prime(log_ratio: torch.Tensor, divergence: str, alpha: float) -> torch.Tensor:
    """f'(u) at u = pi/pi_ref = exp(log_ratio), each form shifted so that f'(1) = 0 (a constant
    shift cancels in the chosen-minus-rejected difference)."""
    if divergence == "reverse_kl":  # f(u) = u log u: f'(u) = log u (+ 1)
        return log_ratio
    if divergence == "forward_kl":  # f(u) = -log u: f'(u) = -1/u (+ 1)
        return 1.0 - torch.exp(torch.clamp(-log_ratio, max=_MAX_EXPONENT))
    if divergence == "js":  # f'(u) = log(2u / (1 + u)) = log 2 + log sigmoid(log u)
        return math.log(2.0) + F.logsigmoid(log_ratio)
    if divergence == "alpha":  # f'(u) = (1 - u^(-alpha)) / alpha
        return (1.0 - torch.exp(torch.clamp(-alpha * log_ratio, max=_MAX_EXPONENT))) / alpha
    raise ValueError(f"fdpo: divergence must be one of {list(_DIVERGENCES)}, got {divergence!r}")


# --------------------------------------------------------------------------- DPO family


@PREFERENCE_LOSSES.register(
    "dpo",
    paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    arxiv="2305.18290",
    formula="L = -log sigmoid(beta * h), h = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)",
)
def dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al., arXiv 2305.18290): the Bradley-Terry log-loss on the implicit
    reward ``r(y) = beta * log pi(y)/pi_ref(y)``. TRL's ``loss_type="sigmoid"``, default
    ``beta = 0.1`` as TRL.

    ``dL/dh = -beta * sigmoid(-beta * h)``: each pair's weight is how wrongly the implicit
    reward ranks it, and it vanishes once the margin is large. Log-probs are summed over tokens
    (no length normalization), as in the paper and TRL.
    """
    _check_beta("dpo", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    loss = -F.logsigmoid(beta * (chosen_lr - rejected_lr))
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "cdpo",
    paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model; "
    "A note on DPO with noisy preferences & relationship to IPO (Mitchell 2023, conservative DPO)",
    arxiv="2305.18290",
    formula="L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)",
)
def cdpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Conservative DPO: DPO with label smoothing ``eps``, i.e. the cross-entropy against the
    target preference probability ``1 - eps`` instead of 1. Its minimum over the margin is at
    ``sigmoid(beta * h) = 1 - eps`` (``beta * h = log((1 - eps) / eps)``), so, unlike DPO, it
    stops pushing the margin up and pulls it back beyond that point.

    The form is the one older TRL versions applied to ``loss_type="sigmoid"`` when
    ``label_smoothing > 0`` (and that TRL's CPOTrainer still applies to its reference-free
    margin). TRL 1.16's DPOTrainer no longer reads ``label_smoothing`` for "sigmoid"; the tests
    compare with its "aot" loss on one pair at a time (sorting a batch of one is the identity,
    so "aot" is exactly this formula there). Not confirmed: Mitchell's note has no arXiv id and
    was not read; ``label_smoothing = 0.1`` is this project's default, not a paper value.
    """
    _check_beta("cdpo", beta)
    _check_smoothing("cdpo", label_smoothing, high=0.5)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    loss = _smoothed_logistic(beta * (chosen_lr - rejected_lr), label_smoothing)
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "robust",
    paper="Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    arxiv="2403.00409",
    formula="L = [(1 - eps) * l(beta * h) - eps * l(-beta * h)] / (1 - 2 eps), "
    "l(z) = -log sigmoid(z)",
)
def robust(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (rDPO; Chowdhury, Kini, Natarajan, arXiv 2403.00409): an unbiased estimate of
    the clean DPO loss when each preference label is flipped with known probability
    ``eps = label_smoothing`` in [0, 0.5): ``(1 - eps) L(h) + eps L(-h) = l(beta * h)``, so in
    expectation over the flips the clean loss is recovered. TRL's ``loss_type="robust"``.

    Unlike ``cdpo`` the estimate can be negative and is not bounded below in h. Default
    ``eps = 0.1``, the "typical value recommended by the Robust DPO paper" per TRL's
    documentation (TRL's own default, 0.0, would make it plain DPO). Not confirmed: the formula
    and that value come from TRL's code and docs; the paper's equation was not read.
    """
    _check_beta("robust", beta)
    _check_smoothing("robust", label_smoothing, high=0.5)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    z = beta * (chosen_lr - rejected_lr)
    eps = label_smoothing
    loss = ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "ipo",
    paper="A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO)",
    arxiv="2310.12036",
    formula="L = (h' - 1 / (2 beta))^2, h' = (logp_w - ref_logp_w) / |y_w| "
    "- (logp_l - ref_logp_l) / |y_l| (per-token; the plain sums when length_normalize=False)",
)
def ipo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    beta: float = 0.1,
    length_normalize: bool = True,
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al., arXiv 2310.12036; eq. 17 with tau = beta, as TRL cites it): regress the
    log-ratio margin onto ``1 / (2 beta)`` with a squared loss. The gradient vanishes at that
    margin, so IPO does not drive the margin to infinity on deterministic preferences as DPO can.

    By default each completion's log-ratio is divided by its token count, as TRL's
    ``loss_type="ipo"`` does: TRL's comment says this per-token form is not written in the paper
    but was confirmed with the IPO authors and is what the paper's results used. That statement
    is TRL's and was not checked against the paper. ``length_normalize=False`` gives the
    literal sequence-level eq. 17. Default ``beta = 0.1`` as TRL (target margin 5 nats per token).
    """
    _check_beta("ipo", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    if length_normalize:
        chosen_score, rejected_score = (
            _per_token(chosen_lr, chosen_len),
            _per_token(rejected_lr, rejected_len),
        )
    else:
        chosen_score, rejected_score = chosen_lr, rejected_lr
    margin = chosen_score - rejected_score
    loss = (margin - 1.0 / (2.0 * beta)) ** 2
    metrics = _reward_metrics(beta * chosen_lr, beta * rejected_lr)
    metrics["ipo_margin"] = margin.detach()
    return loss, metrics


@PREFERENCE_LOSSES.register(
    "hinge",
    paper="SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arxiv="2305.10425",
    formula="L = max(0, 1 - beta * h), h = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)",
)
def hinge(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """The hinge (SLiC) loss on DPO's reference-normalized margin, as TRL's
    ``loss_type="hinge"``: ``max(0, 1 - beta h) = beta * max(0, 1/beta - h)``, a margin of
    ``1 / beta`` nats. Zero loss and zero gradient once the margin is reached.

    Not the paper's exact objective: SLiC-HF's calibration loss (Zhao et al., arXiv 2305.10425)
    is ``max(0, delta - log pi(y_w) + log pi(y_l))`` on the policy's own log-probs, plus a
    regularizer toward SFT targets; this entry is the reference-normalized variant that TRL
    implements as "hinge" and attributes to SLiC. Default ``beta = 0.1`` as TRL.
    """
    _check_beta("hinge", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    loss = torch.relu(1.0 - beta * (chosen_lr - rejected_lr))
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "rpo",
    paper="Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an "
    "Adversarial Regularizer",
    arxiv="2405.16436",
    formula="L = -log sigmoid(beta * h) + alpha * (-logp_w / |y_w|)",
)
def rpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """RPO (Liu et al., arXiv 2405.16436): DPO plus an SFT (negative log-likelihood) term on the
    chosen completion, which the paper derives as an adversarial reward regularizer that
    counters overoptimization (its "baseline distribution" is taken to be the chosen responses).

    The NLL is per token (``-log pi(y_w) / |y_w|``), as TRL's former ``rpo_alpha`` (the token
    mean of the chosen cross-entropy) and TRL 1.16's ``loss_type=["sigmoid", "sft"]`` with
    ``loss_weights=[1, alpha]``; here it is per pair, so it equals TRL's batch token mean only
    for a batch of one pair or of equal chosen lengths. Not confirmed from the paper: whether its
    weight is written ``eta`` or ``eta * beta`` and whether its SFT term is length-normalized;
    ``alpha = 1.0`` is the value TRL's documentation attributed to the paper.
    """
    _check_beta("rpo", beta)
    loss, metrics = dpo(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=beta)
    nll = _nll(chosen_logp, chosen_len)
    metrics["nll"] = nll.detach()
    return loss + alpha * nll, metrics


@PREFERENCE_LOSSES.register(
    "fdpo",
    paper="Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse "
    "Divergence Constraints",
    arxiv="2309.16240",
    formula="L = -log sigmoid(beta * (f'(u_w) - f'(u_l))), u = pi(y)/pi_ref(y); f'(u) = log u "
    "(reverse_kl), 1 - 1/u (forward_kl), log(2u/(1+u)) (js), (1 - u^-alpha)/alpha (alpha)",
)
def fdpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """f-DPO (Wang et al., arXiv 2309.16240): DPO under an f-divergence constraint instead of
    the reverse KL. For these f the optimal policy satisfies ``r(y) = beta f'(pi/pi_ref) +
    const``, the constant cancels in the Bradley-Terry difference, and the loss is DPO's with
    ``log u`` replaced by ``f'(u)``. ``divergence="reverse_kl"`` is exactly ``dpo``.

    The f' forms (and ``alpha`` in (0, 1), with alpha -> 0 giving reverse KL and alpha -> 1
    forward KL) match the authors' code (alecwangcq/f-divergence-dpo, ``trainers.py``); the
    paper's table itself was not read. Each form is shifted so f'(1) = 0 (TRL's choice; shifts
    cancel in the loss). Exponents are clamped at 80 so that far-off ratios saturate instead of
    overflowing (TRL clamps alpha's the same way in float32).

    TRL's ``f_alpha_divergence_coef`` is NOT this ``alpha``: TRL computes
    ``(u^(c - 1) - 1) / (c - 1)``, which is this form with ``alpha = 1 - c``; both defaults (0.5)
    coincide. The tests compare with TRL under that mapping.
    """
    _check_beta("fdpo", beta)
    if divergence == "alpha" and not 0.0 < alpha < 1.0:
        raise ValueError(f"fdpo: alpha must be in (0, 1), got {alpha}")
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    chosen_score = _f_prime(chosen_lr, divergence, alpha)
    rejected_score = _f_prime(rejected_lr, divergence, alpha)
    loss = -F.logsigmoid(beta * (chosen_score - rejected_score))
    return loss, _reward_metrics(beta * chosen_score, beta * rejected_score)


@PREFERENCE_LOSSES.register(
    "apo_zero",
    paper="Anchored Preference Optimization and Contrastive Revisions: Addressing "
    "Underspecification in Alignment",
    arxiv="2408.06266",
    formula="L = (1 - sigmoid(beta * r_w)) + sigmoid(beta * r_l), r = logp - ref_logp",
)
def apo_zero(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """APO-zero (D'Oosterlinck et al., arXiv 2408.06266, eq. 7 as cited by TRL): anchored to
    the reference, it raises the chosen likelihood and lowers the rejected one independently,
    for when the chosen outputs are better than the model's own. TRL's ``loss_type="apo_zero"``,
    default ``beta = 0.1`` as TRL. Not confirmed: the equation is taken from TRL's code; the
    paper was not read.
    """
    _check_beta("apo_zero", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    loss = (1.0 - torch.sigmoid(beta * chosen_lr)) + torch.sigmoid(beta * rejected_lr)
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "apo_down",
    paper="Anchored Preference Optimization and Contrastive Revisions: Addressing "
    "Underspecification in Alignment",
    arxiv="2408.06266",
    formula="L = sigmoid(beta * r_w) + (1 - sigmoid(beta * (r_w - r_l))), r = logp - ref_logp",
)
def apo_down(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """APO-down (arXiv 2408.06266, eq. 8 as cited by TRL): lowers the chosen likelihood and the
    rejected one more, for when both outputs are worse than the model's own. TRL's
    ``loss_type="apo_down"``, default ``beta = 0.1`` as TRL. Not confirmed: the equation is taken
    from TRL's code; the paper was not read.
    """
    _check_beta("apo_down", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    loss = torch.sigmoid(beta * chosen_lr) + (1.0 - torch.sigmoid(beta * (chosen_lr - rejected_lr)))
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "nca",
    paper="Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arxiv="2402.05369",
    formula="L = -log sigmoid(r_w) - 0.5 * log sigmoid(-r_w) - 0.5 * log sigmoid(-r_l), "
    "r = beta * (logp - ref_logp)",
)
def nca(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """NCA for pairs (Chen et al., arXiv 2402.05369), TRL's ``loss_type="nca_pair"``: each
    completion's implicit reward is scored on its own (an absolute, not relative, likelihood
    target), which the paper argues keeps the chosen likelihood from falling as it can under
    DPO. Default ``beta = 0.1`` as TRL. Not confirmed: the pairwise form is TRL's; the paper's
    K-response equation was not read.
    """
    _check_beta("nca", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    chosen_r, rejected_r = beta * chosen_lr, beta * rejected_lr
    loss = -F.logsigmoid(chosen_r) - 0.5 * F.logsigmoid(-chosen_r) - 0.5 * F.logsigmoid(-rejected_r)
    return loss, _reward_metrics(chosen_r, rejected_r)


@PREFERENCE_LOSSES.register(
    "exo",
    paper="Towards Efficient Exact Optimization of Language Model Alignment (EXO)",
    arxiv="2402.00856",
    formula="L = KL([q, 1-q] || [1-eps, eps]) = q (log q - log(1-eps)) + (1-q) (log(1-q) - "
    "log eps), q = sigmoid(beta * h)",
)
def exo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> tuple[torch.Tensor, Metrics]:
    """EXO for pairs (Ji et al., arXiv 2402.00856, eq. 16 as cited by TRL), TRL's
    ``loss_type="exo_pair"``: the reverse KL from the model's pairwise preference distribution
    ``q = sigmoid(beta h)`` to the label distribution ``[1 - eps, eps]``. DPO minimizes the
    forward KL of the same two distributions (at eps = 0); EXO's reverse KL is mode-seeking. The
    loss is 0 (its minimum) at ``q = 1 - eps``, i.e. ``beta h = log((1 - eps) / eps)``.

    ``eps = label_smoothing`` must be > 0 (log eps); default 1e-3, the value TRL's documentation
    says the paper recommends. Not confirmed: the paper's own equation and its separate reward
    temperature were not read; TRL uses one ``beta``.
    """
    _check_beta("exo", beta)
    _check_smoothing("exo", label_smoothing, high=1.0, open_low=True)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    z = beta * (chosen_lr - rejected_lr)
    eps = label_smoothing
    loss = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


@PREFERENCE_LOSSES.register(
    "sppo_hard",
    paper="Self-Play Preference Optimization for Language Model Alignment",
    arxiv="2405.00675",
    formula="L = (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2, r = logp - ref_logp",
)
def sppo_hard(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """SPPO with hard probabilities (Wu et al., arXiv 2405.00675), TRL's
    ``loss_type="sppo_hard"``: SPPO regresses each completion's log-ratio onto
    ``eta * (P(y wins) - 1/2)``; here P is 1 for the chosen and 0 for the rejected completion
    and ``eta = 1/beta``, so the targets are ``+-1/(2 beta)``. The paper's soft version
    estimates P with a preference model (PairRM) over several samples, which is not this entry.
    In SPPO the reference is the previous self-play iterate; here it is whatever reference the
    trainer supplies. Default ``beta = 0.1`` as TRL. Not confirmed: the hard-label reduction is
    TRL's; the paper's equation was not read.
    """
    _check_beta("sppo_hard", beta)
    chosen_lr, rejected_lr = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp
    )
    target = 0.5 / beta
    loss = (chosen_lr - target) ** 2 + (rejected_lr + target) ** 2
    return loss, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


# --------------------------------------------------------------------------- reference-free


@PREFERENCE_LOSSES.register(
    "simpo",
    paper="SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arxiv="2405.14734",
    formula="L = -log sigmoid(beta * (logp_w / |y_w| - logp_l / |y_l|) - gamma), "
    "gamma = gamma_beta_ratio * beta (label-smoothed like cdpo when label_smoothing > 0)",
)
def simpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng, Xia, Chen, arXiv 2405.14734): reference-free; the implicit reward is the
    length-normalized log-likelihood ``beta * log pi(y) / |y|`` and the Bradley-Terry loss asks
    for a target margin ``gamma``. It takes no reference log-probs at all.

    The margin is set by ``gamma_beta_ratio = gamma / beta``, as in the authors' code
    (princeton-nlp/SimPO: ``logits = pi_logratios - gamma_beta_ratio``, loss
    ``-logsigmoid(beta * logits)``), where their current default is 0.25 and per-model configs
    tune it; 0.5 here (gamma = 1 at beta = 2) is this project's choice. TRL's CPOTrainer
    (``loss_type="simpo"``) takes the absolute ``simpo_gamma = beta * gamma_beta_ratio``; the
    tests compare with it. ``label_smoothing`` smooths the label like ``cdpo``, as both codes do.
    """
    _check_beta("simpo", beta)
    _check_smoothing("simpo", label_smoothing, high=0.5)
    chosen_avg, rejected_avg = (
        _per_token(chosen_logp, chosen_len),
        _per_token(rejected_logp, rejected_len),
    )
    loss = _smoothed_logistic(
        beta * (chosen_avg - rejected_avg - gamma_beta_ratio), label_smoothing
    )
    return loss, _reward_metrics(beta * chosen_avg, beta * rejected_avg)


@PREFERENCE_LOSSES.register(
    "cpo",
    paper="Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
    "Machine Translation",
    arxiv="2401.08417",
    formula="L = -log sigmoid(beta * (logp_w - logp_l)) + alpha * (-logp_w / |y_w|) "
    "(label-smoothed like cdpo when label_smoothing > 0)",
)
def cpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """CPO (Xu et al., arXiv 2401.08417): DPO's loss with a uniform reference (reference-free,
    on summed log-probs) plus a behaviour-cloning NLL on the chosen completion. TRL's CPOTrainer
    with ``loss_type="sigmoid"``; ``beta = 0.1``, ``alpha = 1.0`` (TRL's ``cpo_alpha``) and
    ``label_smoothing = 0.0`` are TRL's defaults.

    The NLL is per token (``-log pi(y_w) / |y_w|``), per pair; TRL's is the token mean of the
    chosen cross-entropy over the batch, which is the same for one pair or equal chosen lengths.
    Not confirmed: the paper writes the NLL as ``-E log pi(y_w|x)`` and whether it is
    length-normalized there was not checked; TRL's length-normalized form is used.
    """
    _check_beta("cpo", beta)
    _check_smoothing("cpo", label_smoothing, high=0.5)
    preference = _smoothed_logistic(beta * (chosen_logp - rejected_logp), label_smoothing)
    nll = _nll(chosen_logp, chosen_len)
    metrics = _reward_metrics(beta * chosen_logp, beta * rejected_logp)
    metrics["nll"] = nll.detach()
    return preference + alpha * nll, metrics


@PREFERENCE_LOSSES.register(
    "orpo",
    paper="ORPO: Monolithic Preference Optimization without Reference Model",
    arxiv="2403.07691",
    formula="L = -logp_w / |y_w| - beta * log sigmoid(log odds(y_w) - log odds(y_l)), "
    "odds(y) = p / (1 - p), log p = logp / |y|",
)
def orpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """ORPO (Hong, Lee, Thorne, arXiv 2403.07691): SFT (the chosen NLL) plus ``beta`` (the
    paper's lambda; TRL calls it ``beta``, default 0.1) times the log-sigmoid odds-ratio loss,
    with no reference model. The odds use the length-averaged log-likelihood
    ``log p = log pi(y) / |y|``: ``log odds = log p - log(1 - p)``, computed with a stable
    ``log(1 - exp(.))``. TRL's ORPOTrainer.

    The NLL is per token of the completion, per pair. TRL's ORPO NLL is the batch token mean
    over prompt and completion tokens; the tests match it with one pair per batch and a
    one-token prompt (whose only token is never predicted). An average log-prob of exactly 0
    (probability 1) has infinite odds; it is clamped to -1e-6 so the loss stays finite. Not
    confirmed: the paper's choice of lambda per model and whether its NLL covers the prompt.
    """
    _check_beta("orpo", beta)
    chosen_avg = _per_token(chosen_logp, chosen_len).clamp(max=-1e-6)
    rejected_avg = _per_token(rejected_logp, rejected_len).clamp(max=-1e-6)
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    nll = _nll(chosen_logp, chosen_len)
    loss = nll - beta * F.logsigmoid(log_odds)
    metrics = _reward_metrics(beta * chosen_avg, beta * rejected_avg)
    metrics["nll"] = nll.detach()
    metrics["log_odds_ratio"] = log_odds.detach()
    return loss, metrics
