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
    # REINFORCE++ (arXiv 2501.03262): whole-batch advantage normalization, PPO clip, token mean.
    # The paper's KL penalty is folded into the reward; here the KL axis is present but off.
    "reinforce_pp": {
        "advantage": {"name": "reinforce_pp"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    # Tricks or Traps? (arXiv 2508.08221), Lite PPO: group mean / batch std advantage,
    # token-level aggregation, vanilla PPO clip, no critic.
    "lite_ppo": {
        "advantage": {"name": "lite_ppo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    # Group Sequence Policy Optimization (arXiv 2507.18071): sequence-level ratio and clipping
    # (left / right ranges 3e-4 / 4e-4), mean over sequences, no KL.
    "gspo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "gspo", "params": {"clip_low": 3e-4, "clip_high": 4e-4}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_mean"},
    },
    # MiniMax-M1 (arXiv 2506.13585): clipped, detached IS weight times REINFORCE, token mean.
    "cispo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "cispo"},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    # DAPO (arXiv 2503.14476): clip-higher (0.2 / 0.28), token-level loss, no KL, soft overlong
    # punishment, dynamic sampling (groups with equal rewards dropped, batch refilled; up to 3
    # rollout rounds a step here, where the paper samples until the batch is full).
    "dapo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.28}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
        "reward_transforms": [{"name": "overlong_penalty"}],
        "batch_filter": {"name": "dynamic_sampling", "max_rounds": 3},
    },
    # Geometric-Mean Policy Optimization (arXiv 2507.20673): geometric mean of token ratios,
    # clipped per token in log space to (e^-0.4, e^0.4), mean over sequences, no KL.
    "gmpo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "gmpo", "params": {"clip_low": 0.4, "clip_high": 0.4}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_mean"},
    },
    # PPO for RLHF (Ouyang et al. arXiv 2203.02155; Ziegler et al. arXiv 1909.08593): a critic
    # (value model) and GAE advantages, clipped surrogate, k1 KL penalty folded into the
    # per-token reward, token-mean loss.
    "ppo": {
        "advantage": {"name": "gae", "params": {"gamma": 1.0, "lam": 0.95}},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k1", "coef": 0.05, "placement": "reward"},
        "aggregation": {"name": "token_mean"},
    },
    # BNPO (arXiv 2506.02864): Beta-normalized advantages, PPO clip, token mean, no KL.
    "bnpo": {
        "advantage": {"name": "bnpo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    # ReMax (arXiv 2310.10505): REINFORCE with the greedy completion's reward as baseline,
    # the whole completion as one action.
    "remax": {
        "advantage": {"name": "remax"},
        "policy_loss": {"name": "pg"},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_sum"},
    },
    # DisCO (arXiv 2505.12366): discriminative score objective over each group's correct and
    # incorrect completions, no clipping, squared-hinge KL constraint; log-sum-exp variant on.
    "disco": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "disco"},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_mean"},
    },
    # The Entropy Mechanism of RL for Reasoning LMs (arXiv 2505.22617): Clip-Cov and KL-Cov.
    "clip_cov": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "clip_cov"},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    "kl_cov": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "kl_cov"},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "token_mean"},
    },
    # Rewarding the Unlikely: GRPO with correct rewards scaled down by their likelihood rank.
    "unlikely_grpo": {
        "advantage": {"name": "grpo"},
        "policy_loss": {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.2}},
        "kl": {"name": "k3", "coef": 0.0},
        "aggregation": {"name": "seq_mean_token_mean"},
        "reward_transforms": [{"name": "unlikely"}],
    },
}
