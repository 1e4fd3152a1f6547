"""Reward models: a scalar head over any HF backbone, trained with the Bradley-Terry loss
(``rewardlab rm train``) and evaluated on held-out pairs (``rewardlab rm eval``).

Names are imported on first use, so that mounting the ``rm`` commands on the CLI does not
import torch and transformers for every ``rewardlab`` command.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Bucket": "evaluate",
    "RewardEval": "evaluate",
    "evaluate_pairs": "evaluate",
    "evaluate_saved": "evaluate",
    "pairwise_metrics": "evaluate",
    "RewardModelConfig": "config",
    "ENSEMBLE_AGGREGATIONS": "ensemble",
    "Ensemble": "ensemble",
    "aggregate": "ensemble",
    "load_scorer": "ensemble",
    "preference_strength": "ensemble",
    "bradley_terry": "losses",
    "apply_strength": "strength",
    "prepare_strength": "strength",
    "RewardModel": "model",
    "load_reward_model": "model",
    "RewardModelResult": "trainer",
    "train_reward_model": "trainer",
}

__all__ = [
    "ENSEMBLE_AGGREGATIONS",
    "Bucket",
    "Ensemble",
    "RewardEval",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelResult",
    "aggregate",
    "apply_strength",
    "bradley_terry",
    "evaluate_pairs",
    "evaluate_saved",
    "load_reward_model",
    "load_scorer",
    "pairwise_metrics",
    "preference_strength",
    "prepare_strength",
    "train_reward_model",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rewardlab.reward_models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rewardlab.reward_models.{_WHERE[name]}"), name)
