"""The online-RL axes. Importing this package registers every built-in entry."""

from rewardlab.algorithms import advantages, aggregation, kl, policy_losses  # noqa: F401
from rewardlab.algorithms.advantages import ADVANTAGES
from rewardlab.algorithms.aggregation import AGGREGATIONS
from rewardlab.algorithms.kl import KL_ESTIMATORS
from rewardlab.algorithms.policy_losses import POLICY_LOSSES
from rewardlab.algorithms.recipes import RECIPES

AXES = {
    "advantage": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "kl": KL_ESTIMATORS,
    "aggregation": AGGREGATIONS,
}

__all__ = ["ADVANTAGES", "AGGREGATIONS", "AXES", "KL_ESTIMATORS", "POLICY_LOSSES", "RECIPES"]
