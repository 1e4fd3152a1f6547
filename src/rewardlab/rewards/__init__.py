"""Reward sources: build them from the config, score a batch, combine into one reward.

The online trainer's use, top to bottom::

    sources = build_reward_sources(config.rewards, task)
    scores = score_completions(sources, prompts, completions, columns)  # name -> [B], NaN = n/a
    rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    metrics.update(reward_metrics(scores))
"""

# Imported for its side effect: it registers the `llm_judge` reward in REWARD_FACTORIES.
import rewardlab.judges.llm  # noqa: F401

# Imported for its side effect: it registers the `reward_model` reward in REWARD_FACTORIES.
from rewardlab.reward_models import reward_source as _reward_model_source  # noqa: F401
from rewardlab.rewards.builtin import REWARD_FACTORIES, RewardFn
from rewardlab.rewards.combine import combine_rewards, reward_metrics
from rewardlab.rewards.loading import RewardSource, build_reward_sources

# Imported for its side effect too: it registers the `spo` reward in REWARD_FACTORIES.
from rewardlab.rewards.preference_fn import (
    PreferenceFn,
    build_preference_fn,
    group_win_matrix,
    win_rates,
)
from rewardlab.rewards.scoring import (
    drain_failure_counts,
    drain_source_failures,
    drain_source_metrics,
    score_completions,
    score_rows,
)

__all__ = [
    "REWARD_FACTORIES",
    "PreferenceFn",
    "RewardFn",
    "RewardSource",
    "build_preference_fn",
    "build_reward_sources",
    "combine_rewards",
    "drain_failure_counts",
    "drain_source_failures",
    "drain_source_metrics",
    "group_win_matrix",
    "reward_metrics",
    "score_completions",
    "score_rows",
    "win_rates",
]
