"""From per-source scores to the one reward the advantage sees: each source's transforms in
order (``rewards[i].transforms``), then the combiner (``reward_combiner``).

Transforms and combiners are registry entries (``REWARD_TRANSFORMS``, ``REWARD_COMBINERS``);
a stateful one (running normalization, constrained multipliers) keeps its state in the
``state`` mapping given here, which the trainer saves with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rewardlab.algorithms.reward_transforms import REWARD_TRANSFORMS
from rewardlab.config import CombinerChoice
from rewardlab.registry import Registry
from rewardlab.rewards.combine import combine_rewards
from rewardlab.rewards.loading import RewardSource

State = dict[str, dict[str, torch.Tensor]]


def is_plain(sources: list[RewardSource], combiner: CombinerChoice) -> bool:
    """No transform and the default combiner: the reward is the weighted NaN-sum."""
    return combiner.name == "weighted_sum" and not combiner.params and not any(s.transforms for s in sources)


def shape_rewards(
    scores: Mapping[str, torch.Tensor],
    sources: list[RewardSource],
    combiner: CombinerChoice,
    fields: Mapping[str, Any],
    state: State,
    seed: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The combined reward [B] and metrics (``reward/<source>/shaped``: each transformed
    source's mean). ``fields`` are the batch fields a transform may read (``group``,
    ``lengths``, ``max_len``, ...); ``state`` is updated in place."""
    weights = {s.name: s.weight for s in sources}
    if is_plain(sources, combiner):
        return combine_rewards(scores, weights), {}
    shaped: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    for i, source in enumerate(sources):
        values = scores[source.name].float()
        for j, choice in enumerate(source.transforms):
            given = {"reference_rewards": None, **fields, "rewards": values, "seed": seed + 7919 * i + j}
            values = _call(REWARD_TRANSFORMS, choice.name, given, choice.params, state, f"{source.name}/{j}")
        shaped[source.name] = values
        if source.transforms and not values.isnan().all():
            metrics[f"reward/{source.name}/shaped"] = float(values[~values.isnan()].mean())
    from rewardlab.rewards.combiners import REWARD_COMBINERS

    given = {"reference_rewards": None, **fields, "scores": shaped, "weights": weights, "seed": seed}
    combined = _call(REWARD_COMBINERS, combiner.name, given, combiner.params, state, "combiner")
    return combined.float(), metrics | _state_metrics(state.get("combiner", {}))


def _call(
    registry: Registry,
    name: str,
    fields: dict[str, Any],
    params: Mapping[str, Any],
    state: State,
    key: str,
) -> torch.Tensor:
    """Call a transform or combiner; a stateful one gets and returns its state under ``key``."""
    if "state" in registry.get(name).inputs:
        out, state[key] = registry.call(name, fields | {"state": state.get(key, {})}, params)
        return out
    return registry.call(name, fields, params)


def _state_metrics(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalar state (a constrained combiner's multipliers) as ``reward_combiner/<key>``."""
    return {f"reward_combiner/{k}": float(v) for k, v in values.items() if torch.as_tensor(v).numel() == 1}
