"""Advantage estimators: rewards (one per sequence), group ids and masks -> advantage per token.

Outcome-reward estimators compute one number per sequence and broadcast it over that
sequence's completion tokens; padded positions get 0.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import group_count, group_mean, group_std
from rewardlab.registry import Registry

ADVANTAGES = Registry("advantage")


def _per_token(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return seq_adv[:, None] * mask.to(seq_adv.dtype)


@ADVANTAGES.register(
    "grpo",
    paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arxiv="2402.03300",
    formula="A_i = (r_i - mean(r_group)) / (std(r_group) + eps)",
)
def grpo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Group Relative Policy Optimization advantage (outcome supervision).

    DeepSeekMath (arXiv 2402.03300), section 4.1.2: each of the G completions of a prompt
    gets A_i = (r_i - mean(r)) / std(r), computed within its group. ``std`` is the unbiased
    sample standard deviation, as in TRL and verl; a group whose rewards are all equal has
    std 0 and gets advantage 0.
    """
    rewards = rewards.float()
    centered = rewards - group_mean(rewards, group)
    return _per_token(centered / (group_std(rewards, group) + eps), mask)


@ADVANTAGES.register(
    "dr_grpo",
    paper="Understanding R1-Zero-Like Training: A Critical Perspective",
    arxiv="2503.20783",
    formula="A_i = r_i - mean(r_group)",
)
def dr_grpo(rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage: the group mean baseline without division by the group std.

    "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv 2503.20783) shows
    that dividing by std(r) up-weights questions that are too easy or too hard (a difficulty
    bias) and drops it: A_i = r_i - mean(r_group).
    """
    rewards = rewards.float()
    return _per_token(rewards - group_mean(rewards, group), mask)


@ADVANTAGES.register(
    "rloo",
    paper="Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
    "Feedback in LLMs",
    arxiv="2402.14740",
    formula="A_i = r_i - (1/(G-1)) * sum_{j != i} r_j = G/(G-1) * (r_i - mean(r_group))",
)
def rloo(rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantage.

    Ahmadian et al. (arXiv 2402.14740), eq. for RLOO: the baseline of sample i is the mean
    reward of the other G-1 samples of the same prompt, A_i = r_i - mean_{j != i} r_j, which
    equals G/(G-1) * (r_i - mean(r_group)). Groups of one sample have no baseline and get 0.
    """
    rewards = rewards.float()
    count = group_count(group, rewards.dtype)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return _per_token(scale * (rewards - group_mean(rewards, group)), mask)
