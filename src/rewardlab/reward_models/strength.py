"""Preference strength and the pair handling built on it, from "Secrets of RLHF in Large
Language Models Part II: Reward Modeling" (Wang et al., arXiv 2401.06080).

An ensemble of K reward models (or a single one, K = 1) scores both sides of every training
pair; the pair's preference strength is the mean over members of the reward difference,
``s = 1/K sum_k (r_k(chosen) - r_k(rejected))`` (and its spread, the std over members; see
:func:`rewardlab.reward_models.ensemble.preference_strength`). The paper finds that pairs of
strongly negative strength are mostly mislabelled and pairs near zero are ambiguous, and
mitigates them before / while training the reward model:

* flip: a pair with ``s < flip_below`` (< 0) has its chosen and rejected swapped, after which
  its strength is ``-s``;
* label smoothing: a pair with ``|s| < ambiguous_below`` trains with
  ``-(1 - eps) log sigmoid(d - m) - eps log sigmoid(-(d - m))`` (:func:`losses.bradley_terry`);
* adaptive margin: every pair gets the margin ``m = gamma * s`` (the paper's form:
  ``-log sigmoid(r_c - r_r - gamma * s)``), optionally clamped below at ``margin_min``, so
  strong pairs must be separated more and contradicted ones (if not flipped) less.

Smoothing and margin read the strength after flipping. :func:`apply_strength` is the pure
transformation; :func:`prepare_strength` scores the pairs with the configured ensemble and
applies it (called by the trainers before training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from rewardlab.reward_models.config import RewardStrengthConfig
from rewardlab.reward_models.data import RewardPair
from rewardlab.reward_models.ensemble import Ensemble, load_scorer, preference_strength


def apply_strength(
    pairs: Sequence[RewardPair],
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    cfg: RewardStrengthConfig,
) -> tuple[list[RewardPair], list[float], list[float], dict[str, float]]:
    """Flip, smooth and margin ``pairs`` by their strength ``mean`` (ensemble std ``std``).

    Returns ``(pairs, eps, margins, counts)``: the pairs (flipped ones swapped; each carrying
    its ``smoothing`` eps and ``strength_margin``), the per-pair eps and adaptive margins, and
    ``counts``: ``strength/flipped``, ``strength/smoothed``, ``strength/margined`` (pairs
    with a nonzero adaptive margin) and the distribution of the strength before flipping
    (``strength/mean``, ``strength/min``, ``strength/p10`` / ``p50`` / ``p90``,
    ``strength/max``, ``strength/negative_share``, ``strength/std`` = mean ensemble std).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if not (len(mean_t) == len(std_t) == len(pairs)):
        raise ValueError(f"{len(pairs)} pairs but {len(mean_t)} strengths and {len(std_t)} stds")
    out: list[RewardPair] = []
    eps: list[float] = []
    margins: list[float] = []
    flipped = smoothed = margined = 0
    for pair, s in zip(pairs, mean_t.tolist(), strict=True):
        if cfg.flip_below is not None and s < cfg.flip_below:
            pair = replace(pair, chosen=pair.rejected, rejected=pair.chosen)
            s = -s
            flipped += 1
        e = 0.0
        if cfg.smooth_ambiguous is not None and abs(s) < cfg.ambiguous_below:
            e = cfg.smooth_ambiguous
            smoothed += 1
        m = 0.0
        if cfg.adaptive_margin is not None:
            m = cfg.adaptive_margin * s
            if cfg.margin_min is not None:
                m = max(m, cfg.margin_min)
            margined += m != 0.0
        eps.append(e)
        margins.append(m)
        out.append(replace(pair, smoothing=e, strength_margin=m))
    counts = {
        "strength/pairs": float(len(out)),
        "strength/flipped": float(flipped),
        "strength/smoothed": float(smoothed),
        "strength/margined": float(margined),
    }
    counts |= strength_summary(mean_t, std_t)
    return out, eps, margins, counts


def strength_summary(mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
    """The distribution of the strengths: mean, quantiles, negative share, mean ensemble std."""
    if not len(mean):
        return {}
    q = torch.quantile(mean, torch.tensor([0.1, 0.5, 0.9], dtype=mean.dtype)).tolist()
    return {
        "strength/mean": float(mean.mean()),
        "strength/min": float(mean.min()),
        "strength/p10": q[0],
        "strength/p50": q[1],
        "strength/p90": q[2],
        "strength/max": float(mean.max()),
        "strength/negative_share": float((mean < 0).double().mean()),
        "strength/std": float(std.mean()),
    }


def pair_strength(scorer: Any, pairs: Sequence[RewardPair], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the reward differences of ``pairs`` over the members of ``scorer``
    (an :class:`Ensemble`, or a single reward model: std 0)."""
    ensemble = scorer if isinstance(scorer, Ensemble) else Ensemble([scorer])
    prompts = [p.prompt for p in pairs]
    chosen = ensemble.member_rewards(prompts, [p.chosen for p in pairs], batch_size)
    rejected = ensemble.member_rewards(prompts, [p.rejected for p in pairs], batch_size)
    return preference_strength(chosen, rejected)


def prepare_strength(
    pairs: list[RewardPair], cfg: RewardStrengthConfig
) -> tuple[list[RewardPair], dict[str, float]]:
    """The training pairs after :func:`apply_strength` with the strength from
    ``cfg.ensemble``, and the counts; the pairs unchanged (and no counts) when it is off."""
    if cfg.ensemble is None:
        return pairs, {}
    scorer = load_scorer(cfg.ensemble)
    mean, std = pair_strength(scorer, pairs, cfg.batch_size)
    del scorer
    out, _, _, counts = apply_strength(pairs, mean, std, cfg)
    return out, counts
