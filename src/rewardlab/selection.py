"""Test-time selection: pick one of a prompt's ``n`` sampled candidates.

Every entry of ``SELECTORS`` (axis ``selector``) is a pure function over one prompt's
candidates. Its batch inputs are some of

- ``scores``: ``[n]`` selection reward of each candidate (a reward model, a rule, ...); NaN
  (a reward that does not apply) counts as the lowest score;
- ``answers``: ``n`` extracted final answers (hashable), ``None`` where no answer was found;
- ``member_scores``: ``[K, n]`` the selection scores of each of ``K`` ensemble members;

its keyword-only parameters are its hyperparameters, and it returns the chosen index.

Ties are broken the same way everywhere: higher score first, then lower index, so a selector
is deterministic and the candidates it sees at ``n`` are a prefix of those at ``2n``.

``bon_kl(n)`` is the analytic KL of the best-of-n policy to the sampling policy, reported
next to the achieved reward by ``rewardlab bon``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

SELECTORS = Registry("selector")

Answers = Sequence[Hashable | None]


def _as_scores(scores: Any) -> torch.Tensor:
    """``scores`` as a float64 vector with NaN replaced by -inf (a reward that does not apply
    never wins over one that does)."""
    values = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("a selector needs at least one candidate")
    return torch.where(values.isnan(), torch.full_like(values, -math.inf), values)


def _best(values: torch.Tensor, among: Sequence[int]) -> int:
    """The index in ``among`` with the highest value; ties go to the lowest index."""
    best = among[0]
    for i in among[1:]:
        if values[i] > values[best] or (values[i] == values[best] and i < best):
            best = i
    return best


def _groups(answers: Answers, n: int) -> dict[Hashable, list[int]]:
    """Candidate indices per answer, in order of first appearance; ``None`` answers are left
    out (no vote)."""
    if len(answers) != n:
        raise ValueError(f"{len(answers)} answers for {n} candidates")
    groups: dict[Hashable, list[int]] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(answer, []).append(i)
    return groups


def _rank_groups(groups: dict[Hashable, list[int]], values: torch.Tensor) -> list[list[int]]:
    """Answer groups from most to least frequent; equal counts by their best candidate's
    score (higher first), then by that candidate's index (lower first)."""

    def key(members: list[int]) -> tuple[int, float, int]:
        top = _best(values, members)
        return (-len(members), -float(values[top]), top)

    return sorted(groups.values(), key=key)


# --------------------------------------------------------------------------- best-of-n


@SELECTORS.register(
    "best_of_n",
    paper="Learning to summarize from human feedback (Stiennon et al.); "
    "Theoretical guarantees on the best-of-n alignment policy (Beirami et al., 2401.01879)",
    arxiv="2009.01325",
    formula="i* = argmax_i score_i (ties: lowest index)",
)
def best_of_n(scores: Any) -> int:
    """Best-of-n (rejection sampling against a reward): the candidate with the highest
    selection score, ``argmax_i score_i``. NaN scores lose; ties go to the lowest index.

    "Learning to summarize from human feedback" (Stiennon et al., arXiv 2009.01325) uses it as
    the reward-model baseline; its KL to the sampler is :func:`bon_kl`.
    """
    values = _as_scores(scores)
    return _best(values, list(range(values.numel())))


# --------------------------------------------------------------------------- majority vote


@SELECTORS.register(
    "majority",
    paper="Self-Consistency Improves Chain of Thought Reasoning in Language Models (Wang et al.)",
    arxiv="2203.11171",
    formula="a* = argmax_a #{i : answer_i = a}; i* = argmax_{i : answer_i = a*} score_i",
)
def majority(scores: Any, answers: Answers) -> int:
    """Majority vote (self-consistency): a candidate whose answer is the most frequent.

    ``a* = argmax_a #{i : answer_i = a}`` over the candidates with an answer (``None`` does not
    vote); the returned candidate is the highest-scoring one with answer ``a*``.

    Ties, in order: between answers with the same count, the answer whose best candidate has
    the higher score, then the one whose best candidate comes first; within the chosen answer,
    the higher score, then the lower index. When no candidate has an answer, falls back to
    best-of-n on ``scores`` (pass ``scores`` of zeros for a pure vote: ties then go to the
    first candidate).

    "Self-Consistency Improves Chain of Thought Reasoning in Language Models" (Wang et al.,
    arXiv 2203.11171).
    """
    values = _as_scores(scores)
    groups = _groups(answers, values.numel())
    if not groups:
        return _best(values, list(range(values.numel())))
    return _best(values, _rank_groups(groups, values)[0])


# --------------------------------------------------------------------------- best-of-majority


def best_of_majority_top_k(
    scores: Any, answers: Answers, *, alpha: float = 0.0, k: int = 1
) -> list[int]:
    """Best-of-Majority's ``k`` submissions (Pass@k): up to ``k`` candidate indices with
    distinct answers, best first.

    1. Empirical frequency of each answer over all ``N`` samples: ``pi_hat(a) = #{i :
       answer_i = a} / N`` (``None`` answers count in ``N`` but form no candidate).
    2. Candidate set ``C = {a : pi_hat(a) >= alpha}``.
    3. Submit the ``k`` answers of ``C`` with the highest reward (each answer represented by its
       highest-scoring candidate); fewer when ``|C| < k``.

    When ``C`` is empty (``alpha`` above every frequency) the most frequent answers are kept
    (the majority-vote fallback), and when no candidate has an answer, candidates are ranked
    by score alone. Ties: higher score, then lower index.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"best_of_majority: alpha must be in [0, 1], got {alpha!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"best_of_majority: k must be a whole number >= 1, got {k!r}")
    values = _as_scores(scores)
    n = values.numel()
    groups = _groups(answers, n)
    if not groups:
        order = sorted(range(n), key=lambda i: (-float(values[i]), i))
        return order[:k]
    # A small tolerance: alpha = 3/8 must keep an answer seen 3 times in 8 despite rounding.
    kept = [m for m in groups.values() if len(m) / n >= alpha - 1e-12]
    if not kept:
        top = max(len(m) for m in groups.values())
        kept = [m for m in groups.values() if len(m) == top]
    best = [_best(values, members) for members in kept]
    best.sort(key=lambda i: (-float(values[i]), i))
    return best[:k]


@SELECTORS.register(
    "best_of_majority",
    paper="Best-of-Majority: Minimax-Optimal Strategy for Pass@k Inference Scaling (Di et al.)",
    arxiv="2510.03199",
    formula="C = {a : pi_hat(a) >= alpha}, pi_hat(a) = #{i : answer_i = a} / N; "
    "submit the top-k of C by score (k = 1 here: argmax_{a in C} max_{i : answer_i = a} score_i)",
)
def best_of_majority(scores: Any, answers: Answers, *, alpha: float = 0.0) -> int:
    """Best-of-Majority (BoM) with one submission (``k = 1``): restrict to the answers whose
    empirical frequency over the ``N`` samples is at least ``alpha``, then take the one with
    the highest reward.

    ``C = {a : pi_hat(a) >= alpha}``, ``pi_hat(a) = #{i : answer_i = a} / N``, chosen answer
    ``argmax_{a in C} max_{i : answer_i = a} score_i``. ``alpha = 0`` is best-of-n over the
    candidates with an answer; ``alpha`` above every frequency falls back to the most frequent
    answers (majority vote, ties by score). For the paper's Pass@k submissions (top-``k`` of
    ``C``) use :func:`best_of_majority_top_k`.

    "Best-of-Majority: Minimax-Optimal Strategy for Pass@k Inference Scaling" (Di, Ji, Li,
    Zhao, Gu; arXiv 2510.03199). The paper sets the threshold from the coverage of the
    sampler (on the order of ``1 / C*``); here it is the plain parameter ``alpha``.
    """
    return best_of_majority_top_k(scores, answers, alpha=alpha, k=1)[0]


# --------------------------------------------------------------------------- conservative ensemble


def ensemble_score(member_scores: Any, *, aggregation: str = "min", coef: float = 1.0) -> torch.Tensor:
    """Aggregate ``[K, n]`` member scores into one conservative score per candidate ``[n]``.

    - ``min``: worst-case over members, ``min_k r_k`` (WCO);
    - ``mean_std``: ``mean_k r_k - coef * std_k r_k`` (population std; 0 for one member);
    - ``mean_var``: ``mean_k r_k - coef * var_k r_k`` (UWO, uncertainty-weighted).

    NaN member scores are ignored per candidate; a candidate no member scores gets NaN.
    """
    values = torch.as_tensor(member_scores, dtype=torch.float64)
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() != 2 or values.shape[0] == 0:
        raise ValueError(f"member_scores must be [K, n] with K >= 1, got shape {tuple(values.shape)}")
    if not math.isfinite(coef) or coef < 0:
        raise ConfigError(f"conservative_bon: coef must be a number >= 0, got {coef!r}")
    valid = ~values.isnan()
    count = valid.sum(0).to(torch.float64)
    filled = torch.where(valid, values, torch.zeros_like(values))
    if aggregation == "min":
        out = torch.where(valid, values, torch.full_like(values, math.inf)).min(0).values
    elif aggregation in ("mean_std", "mean_var"):
        mean = filled.sum(0) / count.clamp(min=1)
        var = (torch.where(valid, values - mean, torch.zeros_like(values)) ** 2).sum(0) / count.clamp(min=1)
        spread = var.sqrt() if aggregation == "mean_std" else var
        out = mean - coef * spread
    else:
        raise ConfigError(
            f"conservative_bon: aggregation must be one of min, mean_std, mean_var, got {aggregation!r}"
        )
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


@SELECTORS.register(
    "conservative_bon",
    paper="Reward Model Ensembles Help Mitigate Overoptimization (Coste et al.)",
    arxiv="2310.02743",
    formula="i* = argmax_i agg_k r_k(i); agg = min_k (WCO) | mean_k - coef*std_k | "
    "mean_k - coef*var_k (UWO)",
)
def conservative_bon(member_scores: Any, *, aggregation: str = "min", coef: float = 1.0) -> int:
    """Conservative best-of-n: best-of-n on an ensemble's pessimistic score.

    ``i* = argmax_i agg(r_1(i), ..., r_K(i))`` with ``agg`` from :func:`ensemble_score`:
    ``min`` (worst-case optimization), ``mean_std`` (``mean - coef * std``) or ``mean_var``
    (uncertainty-weighted optimization, ``mean - coef * var``). With one member every
    aggregation is that member's score, so this is plain best-of-n.

    "Reward Model Ensembles Help Mitigate Overoptimization" (Coste, Anwar, Kirk, Krueger;
    arXiv 2310.02743), which evaluates best-of-n and PPO with these ensemble objectives.
    """
    return best_of_n(ensemble_score(member_scores, aggregation=aggregation, coef=coef))


# --------------------------------------------------------------------------- KL of best-of-n


def bon_kl(n: int) -> float:
    """KL(best-of-n policy || sampling policy) = ``log n - (n - 1) / n`` (nats).

    The analytic formula of "Learning to summarize from human feedback" (Stiennon et al.,
    arXiv 2009.01325, appendix), exact when the selection reward has no ties (a continuous
    reward); "Theoretical guarantees on the best-of-n alignment policy" (Beirami et al., arXiv
    2401.01879) shows it is in general an upper bound on the actual KL. ``bon_kl(1) = 0``,
    ``bon_kl(2) = log 2 - 1/2``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"bon_kl: n must be a whole number >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def select(name: str, fields: dict[str, Any], params: dict[str, Any]) -> int:
    """Call selector ``name`` on one prompt's ``fields`` (``scores``, ``answers``,
    ``member_scores``) with its ``params``."""
    return int(SELECTORS.call(name, fields, params))


__all__ = [
    "SELECTORS",
    "best_of_majority",
    "best_of_majority_top_k",
    "best_of_n",
    "bon_kl",
    "conservative_bon",
    "ensemble_score",
    "majority",
    "select",
]
