"""Recipes: named presets that pick one entry per axis plus hyperparameters.

A config names a recipe and may override any axis; a new method from the literature is one
function, one test and one line here.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # DeepSeekMath (arXiv 2402.03300): group-normalized advantages, PPO clip, k3 KL in the loss,
    # per-sequence mean of token losses.
    "grpo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_mean"},
    },
    # Understanding R1-Zero-Like Training (arXiv 2503.20783): no std, constant length normalizer.
    "dr_grpo": {
        "advantage": {"name": "dr_grpo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_sum_norm"},
    },
    # Back to Basics (arXiv 2402.14740): leave-one-out baseline; k1 KL.
    "rloo": {
        "advantage": {"name": "rloo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k1", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
}
