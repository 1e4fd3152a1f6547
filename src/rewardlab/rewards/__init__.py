"""Reward sources: build them from the config, score a batch, combine into one reward.

The online trainer's use, top to bottom::

    sources = build_reward_sources(config.rewards, task)
    scores = score_completions(sources, prompts, completions, columns)  # name -> [B], NaN = n/a
    rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    metrics.update(reward_metrics(scores))
"""

from rewardlab.rewards.builtin import REWARD_FACTORIES, RewardFn
from rewardlab.rewards.combine import combine_rewards, reward_metrics
from rewardlab.rewards.loading import RewardSource, build_reward_sources
from rewardlab.rewards.scoring import drain_failure_counts, score_completions, score_rows

__all__ = [
    "REWARD_FACTORIES",
    "RewardFn",
    "RewardSource",
    "build_reward_sources",
    "combine_rewards",
    "drain_failure_counts",
    "reward_metrics",
    "score_completions",
    "score_rows",
]
