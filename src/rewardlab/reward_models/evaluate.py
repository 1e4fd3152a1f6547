"""Evaluation of a reward model on held-out pairs: pairwise accuracy, mean reward gap,
calibration (ECE and Brier score of the Bradley-Terry probability), and accuracy by bucket.

All metrics are functions of the rewards ``r_w`` (chosen) and ``r_l`` (rejected), so they are
computed from two tensors (:func:`pairwise_metrics`) and tested on hand-made cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.reward_models.data import RewardPair, margins_of
from rewardlab.reward_models.losses import bradley_terry


@dataclass(frozen=True)
class Bucket:
    """Pairs whose bucketing value lies in [lo, hi]: how many, and how often ranked right."""

    lo: float
    hi: float
    count: int
    accuracy: float


@dataclass
class RewardEval:
    """Scalar metrics (``eval/...``, for the sinks) and the accuracy buckets."""

    metrics: dict[str, float]
    buckets: list[Bucket] = field(default_factory=list)
    bucket_by: str = "reward_gap"  # "margin" (the data's column) or "reward_gap" (|r_w - r_l|)


def correct(gap: torch.Tensor) -> torch.Tensor:
    """1 where chosen outscores rejected, 0 where it does not, 1/2 on a tie (a coin flip's
    expected accuracy: an untrained zero-head model scores exactly 0.5, not 0)."""
    return (gap > 0).float() + 0.5 * (gap == 0).float()


def expected_calibration_error(gap: torch.Tensor, bins: int = 10) -> float:
    """ECE of the Bradley-Terry probability ``p = sigmoid(r_w - r_l)`` (Guo et al., "On
    Calibration of Modern Neural Networks", arXiv 1706.04599).

    A pair's order is arbitrary, so the prediction is "the side with the higher reward is
    preferred", made with confidence ``c = max(p, 1 - p)`` in [0.5, 1] and right when that side
    is the chosen one. With equal-width bins over [0.5, 1]:
    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``.
    """
    p = torch.sigmoid(gap.double())
    confidence = torch.maximum(p, 1 - p)
    right = correct(gap).double()
    # Bin index of each confidence; c = 1 goes into the last bin.
    index = ((confidence - 0.5) * 2 * bins).floor().clamp(0, bins - 1).long()
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            share = float(inside.double().mean())
            total += share * abs(float(right[inside].mean() - confidence[inside].mean()))
    return total


def accuracy_buckets(values: torch.Tensor, gap: torch.Tensor, buckets: int = 4) -> list[Bucket]:
    """Accuracy of pairs grouped by ``values`` (a margin, or |r_w - r_l|).

    Few distinct values (at most ``buckets``, e.g. Llama 2's rating margins 0..3) get one
    bucket each; otherwise buckets are the quantiles of ``values`` (equal-count, ties kept
    together, so a bucket may hold more or fewer pairs than n / buckets). Empty buckets are
    dropped.
    """
    values = values.double()
    right = correct(gap)
    distinct = torch.unique(values)
    if len(distinct) <= buckets:
        groups = [(float(v), float(v), values == v) for v in distinct]
    else:
        edges = torch.quantile(values, torch.linspace(0, 1, buckets + 1, dtype=torch.float64))
        # Bucket i holds edges[i] < v <= edges[i + 1]; the first also holds the minimum.
        index = (torch.searchsorted(edges[1:-1].contiguous(), values, right=False)).clamp(0, buckets - 1)
        groups = []
        for b in range(buckets):
            inside = index == b
            if inside.any():
                groups.append((float(values[inside].min()), float(values[inside].max()), inside))
    return [Bucket(lo, hi, int(m.sum()), float(right[m].mean())) for lo, hi, m in groups if m.any()]


def pairwise_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margins: torch.Tensor | None = None,
    *,
    bins: int = 10,
    buckets: int = 4,
) -> RewardEval:
    """Metrics of rewards ``chosen`` / ``rejected`` ([N] each) of N held-out pairs; with
    ``margins`` (the data's margin column) the buckets are by margin, else by |r_w - r_l|."""
    chosen, rejected = chosen.detach().double(), rejected.detach().double()
    gap = chosen - rejected
    p = torch.sigmoid(gap)
    both = torch.cat([chosen, rejected])
    metrics = {
        "eval/accuracy": float(correct(gap).mean()),
        "eval/reward_gap": float(gap.mean()),
        "eval/bt_loss": float(bradley_terry(chosen, rejected).mean()),
        "eval/ece": expected_calibration_error(gap, bins),
        "eval/brier": float(((1 - p) ** 2).mean()),
        "eval/reward_mean": float(both.mean()),
        "eval/reward_std": float(both.std(unbiased=False)),
    }
    if margins is not None:
        found = accuracy_buckets(margins, gap, buckets)
        by = "margin"
    else:
        found = accuracy_buckets(gap.abs(), gap, buckets)
        by = "reward_gap"
    for i, bucket in enumerate(found):
        metrics[f"eval/accuracy_bucket{i}"] = bucket.accuracy
    return RewardEval(metrics, found, by)


def evaluate_pairs(model: Any, pairs: list[RewardPair], *, batch_size: int = 64, bins: int = 10, buckets: int = 4) -> RewardEval:
    """Score every pair's two sides with ``model`` (a :class:`RewardModel`, or an
    :class:`~rewardlab.reward_models.ensemble.Ensemble`, which adds its members' metrics)
    and measure."""
    from rewardlab.reward_models.ensemble import Ensemble, evaluate_members

    if isinstance(model, Ensemble):
        return evaluate_members(model, pairs, batch_size=batch_size, bins=bins, buckets=buckets)
    prompts = [p.prompt for p in pairs]
    chosen = torch.tensor(model.score(prompts, [p.chosen for p in pairs], batch_size))
    rejected = torch.tensor(model.score(prompts, [p.rejected for p in pairs], batch_size))
    margins = margins_of(pairs)
    margin_tensor = torch.tensor(margins) if margins is not None else None
    return pairwise_metrics(chosen, rejected, margin_tensor, bins=bins, buckets=buckets)


def evaluate_saved(
    target: str | Path,
    data: str | Path | None = None,
    *,
    margin_column: str | None = None,
    skip_bad_rows: bool = False,
    batch_size: int = 64,
    bins: int = 10,
    buckets: int = 4,
) -> RewardEval:
    """Evaluate a saved reward model (``rm eval``): ``target`` is a model folder or an
    ``rm train`` run folder (its ``final/``). The pairs are the file ``data``, or, for a run
    folder without ``data``, the run's own held-out pairs."""
    from rewardlab.config import load_config
    from rewardlab.errors import RewardlabError
    from rewardlab.reward_models.config import RewardModelConfig
    from rewardlab.reward_models.data import heldout_reward_pairs, read_pairs
    from rewardlab.reward_models.ensemble import ENSEMBLE_FILE, load_scorer, scorer_folder
    from rewardlab.reward_models.model import META_FILE
    from rewardlab.trainers.common import CONFIG_FILE, FINAL_MODEL

    target = Path(target)
    run_config = None
    folder = scorer_folder(target)
    if folder is not None and folder != target and (target / CONFIG_FILE).is_file():
        run_config = load_config(RewardModelConfig, target / CONFIG_FILE)
    if folder is None and target.is_dir():
        raise RewardlabError(
            f"{target}: neither a reward model or ensemble folder (no {META_FILE} / {ENSEMBLE_FILE}) "
            f"nor a finished `rm train` run folder (no {FINAL_MODEL}/{META_FILE})"
        )
    if folder is None:
        raise RewardlabError(f"{target}: no such folder; pass a reward model or an `rm train` run folder")
    column = margin_column or (run_config.loss.margin_column if run_config else "margin")
    model = load_scorer(folder)
    if data is not None:
        pairs = read_pairs(str(data), model.tokenizer, column, skip_bad_rows=skip_bad_rows).pairs
    elif run_config is not None:
        pairs = heldout_reward_pairs(run_config.data, model.tokenizer, run_config.seed, column)
    else:
        raise RewardlabError(f"{target} is a model folder: pass the pairs to evaluate with --data PATH")
    return evaluate_pairs(model, pairs, batch_size=batch_size, bins=bins, buckets=buckets)
