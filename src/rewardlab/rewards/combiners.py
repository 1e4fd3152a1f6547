"""Reward combiners: per-source scores -> one reward per sequence (``REWARD_COMBINERS``).

A combiner reads ``scores`` (source name -> float [B], already transformed; NaN = the source does
not apply to that row) and ``weights`` (source name -> float, from ``rewards[].weight``), plus
whatever batch fields it names (``group``, ``state``), and returns the combined reward, float32
[B]. A stateful combiner (``constrained``) takes ``state`` (``{}`` on the first step) and
returns ``(rewards, new_state)``.

Entries and the batch fields they read (besides ``scores`` and ``weights``): ``and`` reads
``group``; ``constrained`` reads ``state``; the others nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rewardlab.algorithms.shaping import LOG_SIGMOID_REFERENCES, _scalar, log_sigmoid
from rewardlab.errors import ConfigError
from rewardlab.registry import Registry
from rewardlab.rewards.combine import combine_rewards

REWARD_COMBINERS = Registry("reward_combiner")

_WHERE = "reward_combiner.params"


def _check_sources(scores: Mapping[str, torch.Tensor], who: str) -> None:
    if not scores:
        raise ConfigError(f"{who} needs at least one reward source")


def _unknown_source(name: object, scores: Mapping[str, torch.Tensor], key: str, who: str) -> None:
    if name not in scores:
        raise ConfigError(
            f"{_WHERE}.{key}: {who} names the reward source {name!r}, but the sources are: "
            f"{', '.join(scores)}"
        )


@REWARD_COMBINERS.register(
    "weighted_sum",
    paper="(standard) weighted sum of reward sources, NaN-sum as TRL's GRPOTrainer",
    formula="r = sum_s w_s * score_s over sources s that apply (NaN counts as 0); all-NaN row -> 0",
)
def weighted_sum(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The default: ``rewardlab.rewards.combine.combine_rewards`` (NaN-sum semantics, a row where
    every source is NaN gets 0; float32)."""
    return combine_rewards(scores, weights)


def _batch_z(values: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / (std + eps) over the non-NaN rows (unbiased std, 0 for one row); NaN kept."""
    x = values.float()
    valid = ~torch.isnan(x)
    n = int(valid.sum())
    if n == 0:
        return x.clone()
    v = x[valid]
    mean = v.mean()
    std = ((v - mean).pow(2).sum() / max(n - 1, 1)).sqrt()
    return (x - mean) / (std + eps)


@REWARD_COMBINERS.register(
    "normalize_then_sum",
    paper="(standard) per-source batch z-normalization before a weighted sum",
    formula="z_s = (score_s - mean_batch(score_s)) / (std_batch(score_s) + eps); "
    "r = sum_s w_s * z_s (NaN counts as 0)",
)
def normalize_then_sum(
    scores: Mapping[str, torch.Tensor], weights: Mapping[str, float], *, eps: float = 1e-6
) -> torch.Tensor:
    """z-normalize each source over the batch, then take the weighted NaN-sum.

    Mean and (unbiased, Bessel-corrected) std are over the rows where the source applies; its
    NaN rows stay NaN and count 0 in the sum. A source with one applicable row, or a constant
    one, contributes 0 everywhere. Puts sources of different scales (a 0/1 verifier, an RM
    logit) on an equal footing before the weights apply.
    """
    _check_sources(scores, "normalize_then_sum")
    return combine_rewards({k: _batch_z(v, eps) for k, v in scores.items()}, weights)


@REWARD_COMBINERS.register(
    "min",
    paper="Reward Model Ensembles Help Mitigate Overoptimization (worst-case optimization, WCO)",
    arxiv="2310.02743",
    formula="r = min_s w_s * score_s over sources s that apply and have w_s != 0; all-NaN row -> 0",
)
def min_combiner(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted minimum over sources: r = min_s w_s * score_s.

    Sources that do not apply to a row (NaN) and sources with weight 0 are left out of that
    row's minimum; a row where none is left gets 0. With equal weights of 1 this is the
    worst-case (WCO) objective r = min_i r_i of Coste et al. for reward-model ensembles (project
    digest, literature-1.md #42); the weighting is this project's generalization (a weight
    rescales a source before the comparison, so sources should share a scale).
    """
    _check_sources(scores, "min")
    for name in scores:
        if name not in weights:
            raise ValueError(f"no weight for reward source(s): {name}")
    names = [n for n in scores if float(weights[n]) != 0.0]
    if not names:
        first = next(iter(scores.values()))
        return torch.zeros(first.shape, dtype=torch.float32, device=first.device)
    stacked = torch.stack([scores[n].float() * float(weights[n]) for n in names])
    valid = ~torch.isnan(stacked)
    lowest = torch.where(valid, stacked, torch.full_like(stacked, float("inf"))).amin(0)
    return torch.where(valid.any(0), lowest, torch.zeros_like(lowest))


@REWARD_COMBINERS.register(
    "and",
    paper="Transforming and Combining Rewards for Aligning Large Language Models "
    "(sum of LSC-transformed rewards = logical AND)",
    arxiv="2402.00742",
    formula="r = sum_s w_s * log sigmoid(score_s - ref_s(x)) = log prod_s P(good on s)^w_s "
    "(NaN counts as 0)",
)
def and_combiner(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    group: torch.Tensor,
    *,
    reference: str = "group_mean",
    quantile: float = 0.85,
) -> torch.Tensor:
    """Logical AND of the sources (Wang et al., arXiv 2402.00742).

    Each source is log-sigmoid-centred, u_s = log sigmoid(score_s - ref_s(x)) (the
    ``log_sigmoid`` transform with the same ``reference`` / ``quantile``: each source centred
    on its own group statistic), and the u_s are summed with the weights. With Bradley-Terry
    reward models, sigmoid(score_s - ref_s) is the probability that the response is good on
    property s, so with unit weights the sum is the log-probability that it is good on *every*
    property: one clear failure (u_s very negative) drags the whole reward down, and a large
    score on one source cannot buy back a failure on another (unlike a weighted sum, where it
    can). The paper sums with unit weights; other weights (an exponent on each probability) are
    our extension.

    ``reference``: ``group_mean`` (default), ``group_others``, ``group_quantile``, ``zero`` (the
    scores are already centred logits); see ``rewardlab.algorithms.shaping.centring_reference``.
    ``reference_rewards`` is not available here (it would need one reference per source).
    Apply this combiner to *untransformed* sources (it does the centring itself). A source that
    does not apply to a row (NaN) counts 0 there, i.e. as certainly good.
    """
    _check_sources(scores, "and")
    if reference == "reference_rewards" or reference not in LOG_SIGMOID_REFERENCES:
        choices = [r for r in LOG_SIGMOID_REFERENCES if r != "reference_rewards"]
        raise ConfigError(
            f"{_WHERE}.reference: the 'and' combiner has no reference {reference!r}; choose one "
            f"of: {', '.join(choices)}"
        )
    centred = {
        name: log_sigmoid(values, group, None, reference=reference, quantile=quantile)
        for name, values in scores.items()
    }
    return combine_rewards(centred, weights)


@REWARD_COMBINERS.register(
    "gated",
    paper="(standard) gated reward: the other sources count only where a gate source passes",
    formula="r = [gate >= threshold] * sum_{s != gate} w_s score_s (+ w_gate * gate if "
    "include_gate)",
)
def gated(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    *,
    gate: str | None = None,
    threshold: float = 0.5,
    include_gate: bool = True,
    nan_passes: bool = False,
) -> torch.Tensor:
    """Rewards that count only where a gate passes (e.g. quality scores only for a correct
    answer, or only for a well-formatted one).

    r = 1[gate >= threshold] * sum_{s != gate} w_s * score_s, plus w_gate * gate when
    ``include_gate`` (the gate's own reward counts on every row, passed or not). Sums are
    NaN-sums as in ``weighted_sum``. Where the gate itself is NaN (does not apply), it passes iff
    ``nan_passes`` (default: it fails). ``gate`` must name one of the sources.
    """
    _check_sources(scores, "gated")
    if gate is None:
        raise ConfigError(f"{_WHERE}.gate: gated needs 'gate', the name of the gating source")
    _unknown_source(gate, scores, "gate", "gated")
    gate_values = scores[gate].float()
    passed = torch.where(
        torch.isnan(gate_values),
        torch.full_like(gate_values, float(bool(nan_passes))).bool(),
        gate_values >= threshold,
    )
    others = {k: v for k, v in scores.items() if k != gate}
    if others:
        rest = combine_rewards(others, weights)
        out = torch.where(passed, rest, torch.zeros_like(rest))
    else:
        out = torch.zeros_like(gate_values)
    if include_gate:
        out = out + combine_rewards({gate: gate_values}, weights)
    return out


_DIRECTIONS = ("ge", "le")


@REWARD_COMBINERS.register(
    "constrained",
    paper="Confronting Reward Model Overoptimization with Constrained RLHF",
    arxiv="2310.04373",
    formula="r = sum_{s unconstrained} w_s score_s + sum_k sign_k lambda_k score_k; after each "
    "call lambda_k <- max(0, lambda_k + lr * sign_k * (threshold_k - mean(score_k))), "
    "sign_k = +1 for ge (mean >= threshold), -1 for le (mean <= threshold)",
)
def constrained(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    state: dict[str, torch.Tensor],
    *,
    thresholds: Mapping[str, float] | None = None,
    lr: float = 0.1,
    direction: str | Mapping[str, str] = "ge",
    init: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Lagrangian combination with one multiplier per constrained source; returns
    ``(rewards, new_state)`` (Moskovitz et al., arXiv 2310.04373).

    ``thresholds`` maps each constrained source k to its threshold theta_k; every other source
    is part of the main objective, their weighted NaN-sum. The constrained sources enter through
    their Lagrange multipliers lambda_k >= 0, the dynamic weights:

        r = sum_{s not constrained} w_s score_s + sum_k sign_k * lambda_k * score_k

    (the weights of constrained sources are not used). After the reward is formed, each
    multiplier takes one projected dual-ascent step on this batch's mean score (over its
    non-NaN rows):

        ge (constraint mean(score_k) >= theta_k, sign +1):
            lambda_k <- max(0, lambda_k + lr * (theta_k - mean(score_k)))
        le (constraint mean(score_k) <= theta_k, sign -1):
            lambda_k <- max(0, lambda_k + lr * (mean(score_k) - theta_k))

    so a multiplier grows while its constraint is violated and shrinks (to 0) once it holds.
    The reward of a batch uses the multipliers from before that batch, as the authors' code
    takes the policy step before the multiplier step. ``direction`` is one string for all
    constraints or a mapping source -> "ge"/"le".

    The paper's variants, in these terms: with no unconstrained source (the main objective is
    then only the KL penalty, kept in ``algorithm.kl``) and "ge", the policy is pushed to reach
    each threshold ("proxy point") while staying close to the reference policy (its mu-PPO);
    with the sources as main objective and "le" constraints, each source is kept below its
    threshold (its All-PPO). Equality constraints (xi-PPO, multipliers of either sign) and the
    gradient-free (Nelder-Mead) search for thresholds are not implemented.

    State: ``{"lambda/<source>", "mean/<source>"}`` float64 scalars (the multiplier to use next,
    and the batch mean it was updated with); a batch where a source has no non-NaN row leaves
    its multiplier unchanged.

    Confirmed against a copy of the authors' RL4LMs-based ``ConstrainedPPO`` code (found in the
    code index, repository unnamed there): multipliers act as weights on per-RM advantages,
    a constraint-violation loss lambda * (mean return - threshold) minimized by SGD (so
    lambda <- lambda + lr * (threshold - mean) for the "reach the threshold" mode, the opposite
    sign for the "stay below" mode), ``lagrange_lr`` 0.01 (default) / 0.1 (their dialog config).
    Differences from that code (our simplifications): plain projected ascent instead of SGD with
    momentum 0.1 and gradient clipping, no sigmoid squashing of the multipliers (their default;
    with it the KL term's weight is 2 - sum sigmoid(lambda)), multipliers weighting rewards
    rather than separately normalized advantages, and means over the batch's sequences rather
    than returns-to-go. The paper's own equations were not read.
    """
    _check_sources(scores, "constrained")
    if not thresholds:
        raise ConfigError(
            f"{_WHERE}.thresholds: constrained needs 'thresholds', a mapping from each "
            "constrained source to its threshold"
        )
    if not lr > 0:
        raise ConfigError(f"{_WHERE}.lr: constrained needs lr > 0, got {lr!r}")
    if not init >= 0:
        raise ConfigError(f"{_WHERE}.init: constrained needs init >= 0, got {init!r}")
    for name in thresholds:
        _unknown_source(name, scores, "thresholds", "constrained")
    directions = {
        name: (direction if isinstance(direction, str) else direction.get(name, "ge"))
        for name in thresholds
    }
    for name, d in directions.items():
        if d not in _DIRECTIONS:
            raise ConfigError(
                f"{_WHERE}.direction: constrained needs 'ge' or 'le' for {name!r}, got {d!r}"
            )
    if not isinstance(direction, str):
        for name in direction:
            _unknown_source(name, thresholds, "direction", "constrained (a constrained source)")

    main = {k: v for k, v in scores.items() if k not in thresholds}
    first = next(iter(scores.values()))
    out = (
        combine_rewards(main, weights)
        if main
        else torch.zeros(first.shape, dtype=torch.float32, device=first.device)
    )
    new_state: dict[str, torch.Tensor] = {}
    for name in sorted(thresholds):
        values = scores[name].float()
        valid = ~torch.isnan(values)
        sign = 1.0 if directions[name] == "ge" else -1.0
        lam = float(state[f"lambda/{name}"]) if f"lambda/{name}" in state else float(init)
        out = out + sign * lam * torch.where(valid, values, torch.zeros_like(values))
        if valid.any():
            mean = values[valid].double().mean().item()
            lam = max(0.0, lam + lr * sign * (float(thresholds[name]) - mean))
            new_state[f"mean/{name}"] = _scalar(mean)
        elif f"mean/{name}" in state:
            new_state[f"mean/{name}"] = state[f"mean/{name}"]
        new_state[f"lambda/{name}"] = _scalar(lam)
    return out, new_state
