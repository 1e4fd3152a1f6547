"""Combine per-source scores into one reward per sequence, and summarize them for logging."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def combine_rewards(
    scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """Weighted sum of the sources per row, skipping sources that do not apply (NaN).

    ``reward[b] = sum over sources s with scores[s][b] not NaN of weights[s] * scores[s][b]``

    This is ``nansum`` semantics, as in TRL's GRPOTrainer: a source that returned None for a
    row contributes nothing there, and the other sources are not re-weighted to make up for
    it. A row where every source is NaN gets reward 0.0. Returns float32 ``[B]``.
    """
    if not scores:
        raise ValueError("combine_rewards needs at least one score tensor")
    missing = [name for name in scores if name not in weights]
    if missing:
        raise ValueError(f"no weight for reward source(s): {', '.join(missing)}")
    weighted = torch.stack(
        [scores[name].to(torch.float32) * float(weights[name]) for name in scores]
    )
    # 0 * NaN is NaN, so a zero-weight source that does not apply still drops out here.
    return weighted.nansum(dim=0)


def reward_metrics(scores: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``reward/<name>``: each source's mean over the rows it applies to.

    A source that applied to no row in the batch is left out rather than logged as NaN.
    """
    metrics: dict[str, float] = {}
    for name, values in scores.items():
        applies = ~values.isnan()
        if applies.any():
            metrics[f"reward/{name}"] = values[applies].double().mean().item()
    return metrics
