"""Per-token rewards for the token-level preference losses (TGDPO, T-REG), computed once.

Both are stored like the reference's cached log-probs (per example, per completion, padding
removed) and reach the losses as ``chosen_token_rewards`` / ``rejected_token_rewards``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rewardlab.algorithms.preference_losses_more import (
    dpo_implicit_token_rewards,
    treg_token_rewards,
)
from rewardlab.config import ModelConfig, PreferenceConfig, TokenRewardsConfig
from rewardlab.models.loading import load_policy
from rewardlab.trainers.preference_views import Cache, Example, cached_logprobs

TOKEN_REWARDS = "token_rewards"


def token_reward_fields(config: PreferenceConfig) -> list[str]:
    """The fields a run with ``preference.token_rewards`` adds."""
    if config.preference.token_rewards is None:
        return []
    return [f"chosen_{TOKEN_REWARDS}", f"rejected_{TOKEN_REWARDS}"]


def token_rewards(
    config: PreferenceConfig, reference: Any, tokenizer: Any, examples: Sequence[Example], ref_cache: Cache
) -> dict[str, Cache]:
    """``{"token_rewards": cache}`` for the trainer's extras, or nothing when not configured."""
    spec = config.preference.token_rewards
    if spec is None:
        return {}
    micro, temperature = config.train.micro_batch_size, config.rollout.temperature
    if spec.source == "guide":
        rewards = guide_rewards(spec, tokenizer, examples, ref_cache, micro, temperature)
    else:
        rewards = contrastive_rewards(spec, reference, tokenizer, examples, micro, temperature)
    return {TOKEN_REWARDS: rewards}


def guide_rewards(
    spec: TokenRewardsConfig, tokenizer: Any, examples: Sequence[Example], ref_cache: Cache, micro: int, temperature: float
) -> Cache:
    """TGDPO's guidance: ``beta * (log pi_guide - log pi_ref)`` of each completion token."""
    assert spec.model is not None
    guide, guide_tokenizer = load_policy(ModelConfig(name=spec.model))
    if guide_tokenizer.get_vocab() != tokenizer.get_vocab():
        from rewardlab.errors import ConfigError

        raise ConfigError(
            f"preference.token_rewards.model: '{spec.model}' has a different tokenizer from the "
            "policy's; the guide must score the same tokens (train it from the same base model)"
        )
    guide_cache = cached_logprobs(guide, tokenizer, examples, micro, temperature, as_reference=False)
    return [
        [
            dpo_implicit_token_rewards(g, r, g.new_ones(g.shape), beta=spec.beta)
            for g, r in zip(guide_rows, ref_rows, strict=True)
        ]
        for guide_rows, ref_rows in zip(guide_cache, ref_cache, strict=True)
    ]


def contrastive_rewards(
    spec: TokenRewardsConfig, reference: Any, tokenizer: Any, examples: Sequence[Example], micro: int, temperature: float
) -> Cache:
    """T-REG's self-generated rewards: the reference scores each completion after a prompt
    asking for a better answer and after one asking for a worse answer."""
    better = [replace(e, prompt=spec.better.replace("{prompt}", e.prompt)) for e in examples]
    worse = [replace(e, prompt=spec.worse.replace("{prompt}", e.prompt)) for e in examples]
    good = cached_logprobs(reference, tokenizer, better, micro, temperature, as_reference=True)
    bad = cached_logprobs(reference, tokenizer, worse, micro, temperature, as_reference=True)
    return [
        [treg_token_rewards(b, w, b.new_ones(b.shape)) for b, w in zip(brows, wrows, strict=True)]
        for brows, wrows in zip(good, bad, strict=True)
    ]
