"""Advantage estimators: rewards (one per sequence), group ids and masks -> advantage per token.

Outcome-reward estimators compute one number per sequence and broadcast it over that
sequence's completion tokens; padded positions get 0.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import (
    group_count,
    group_index,
    group_mean,
    group_std,
    group_sum,
)
from rewardlab.errors import ConfigError
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


# --------------------------------------------------------------------------- batch statistics


def _batch_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the whole batch, summed relative to the maximum (as ``group_mean``), so a batch
    of equal values has exactly that value as its mean."""
    if values.numel() == 0:
        return values.new_zeros(())
    top = values.max()
    return top + (values - top).mean()


def _batch_std(values: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) standard deviation over the whole batch; 0 for one row."""
    centered = values - _batch_mean(values)
    return ((centered * centered).sum() / max(values.numel() - 1, 1)).sqrt()


# --------------------------------------------------------------------------- estimators


@ADVANTAGES.register(
    "reinforce",
    paper="Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement "
    "Learning (Williams, 1992; REINFORCE with a baseline)",
    arxiv=None,
    formula="A_i = r_i - mean(r_batch)",
)
def reinforce(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the batch-mean reward as baseline.

    Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning" (Machine Learning, 1992; not on arXiv): any baseline that does not
    depend on the action leaves the policy gradient unbiased; here it is the mean reward of the
    whole batch (every prompt and completion), A_i = r_i - mean_j r_j. Groups are ignored, so
    the advantages have zero mean over the batch, not within each group.
    """
    rewards = rewards.float()
    return _per_token(rewards - _batch_mean(rewards), mask)


@ADVANTAGES.register(
    "reinforce_pp",
    paper="REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    arxiv="2501.03262",
    formula="x_i = r_i (or r_i - mean(r_group) with group_baseline); "
    "A_i = (x_i - mean(x_batch)) / (std(x_batch) + eps)",
)
def reinforce_pp(
    rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_baseline: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ advantage: global (whole-batch) normalization instead of per-group.

    "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (arXiv 2501.03262) drops the critic and GRPO's per-prompt std and normalizes over the
    whole batch: A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps). With
    ``group_baseline=True`` (the "REINFORCE++-baseline" variant) the group mean is subtracted
    first, x_i = r_i - mean(r_group), and the group-centred rewards are then normalized by
    their batch std (their batch mean is already 0).

    ``std`` is the unbiased sample std over the sequences of the batch, as in ``grpo``.
    Not confirmed from the project's paper digests (they only say "batch normalization"):
    whether the paper normalizes over sequences or over tokens (which weights a sequence by
    its length), Bessel's correction, and the value of eps. The paper also folds a per-token
    KL penalty into the return; here KL stays a separate regularizer (``algorithm.kl``).
    """
    rewards = rewards.float()
    x = rewards - group_mean(rewards, group) if group_baseline else rewards
    centered = x - _batch_mean(x)
    return _per_token(centered / (_batch_std(x) + eps), mask)


@ADVANTAGES.register(
    "lite_ppo",
    paper="Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning (Lite PPO)",
    arxiv="2508.08221",
    formula="A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)",
)
def lite_ppo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Lite PPO advantage: group-level mean, batch-level std.

    "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (arXiv 2508.08221)
    recommends centring each reward on its group (prompt) mean and scaling by the std of the
    rewards of the whole batch, A_i = (r_i - mean(r_group)) / (std(r_batch) + eps). Unlike
    GRPO's group std, the batch std does not scale a group whose rewards barely differ up to
    unit spread. Lite PPO pairs it with token-level loss aggregation (the ``lite_ppo`` recipe).

    ``std`` is the unbiased sample std of the raw rewards over every sequence of the batch, as
    ``grpo``'s group std; with a single group this estimator equals ``grpo``. The project's
    digest marks this formula as taken from a secondary source: that the batch std is of the
    raw (not group-centred) rewards, and its Bessel correction, are not confirmed.
    """
    rewards = rewards.float()
    centered = rewards - group_mean(rewards, group)
    return _per_token(centered / (_batch_std(rewards) + eps), mask)


@ADVANTAGES.register(
    "opo",
    paper="On-Policy RL with Optimal Reward Baseline",
    arxiv="2505.23585",
    formula="b = sum_{j in group} l_j r_j / sum_{j in group} l_j;  A_i = r_i - b",
)
def opo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """OPO advantage: the length-weighted group mean as baseline.

    "On-Policy RL with Optimal Reward Baseline" (arXiv 2505.23585): the variance-minimizing
    baseline weights each reward by the squared norm of its sequence's score-function
    gradient (as recalled, not checked against the paper); taking that squared norm
    proportional to the completion length l_j gives
    b = sum_j l_j r_j / sum_j l_j over the prompt's group and A_i = r_i - b. With equal lengths
    this is ``dr_grpo``. ``lengths`` are the completion token counts (``mask.sum(-1)``). A
    group whose completions are all empty (total length 0) falls back to the plain group mean;
    its advantages are masked to 0 anyway.

    Not confirmed from the project's paper digests (the paper is not in them): the formula
    above follows the request that added this entry; the paper's other ingredient, strictly
    on-policy training (one gradient step per batch), is a trainer setting, not part of this
    function.
    """
    rewards = rewards.float()
    weights = lengths.to(rewards.dtype)
    index, n = group_index(group)
    # Weighted mean relative to the group maximum, so a constant group gets exactly 0.
    top = rewards.new_zeros(n).scatter_reduce(0, index, rewards, "amax", include_self=False)[index]
    total = group_sum(weights, group)
    weighted = top + group_sum(weights * (rewards - top), group) / total.clamp(min=1e-12)
    baseline = torch.where(total > 0, weighted, group_mean(rewards, group))
    return _per_token(rewards - baseline, mask)


def _binom_ratio(top: torch.Tensor, bottom: torch.Tensor, k: int) -> torch.Tensor:
    """C(top, k) / C(bottom, k) for integer-valued float64 tensors with bottom >= k >= 0.

    Exact product form prod_{i<k} (top - i) / (bottom - i); a factor that reaches 0 (top < k)
    makes the ratio 0, as C(top, k) = 0 there. Shape [B, k] work, no loop over groups.
    """
    if k == 0:
        return torch.ones_like(top)
    i = torch.arange(k, dtype=top.dtype, device=top.device)
    factors = ((top[:, None] - i) / (bottom[:, None] - i)).clamp(min=0)
    return factors.prod(-1)


@ADVANTAGES.register(
    "passk",
    paper="Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large "
    "Reasoning Models",
    arxiv="2508.10751",
    formula="R = 1 - C(N-c,k)/C(N,k), sigma = sqrt(R(1-R)); correct: A = (1-R)/sigma; "
    "incorrect: A = (1 - R - C(N-c-1,k-1)/C(N-1,k-1))/sigma; sigma = 0 -> A = 0",
)
def passk(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, k: int = 4
) -> torch.Tensor:
    """Pass@k training advantage (analytic form), for binary rewards.

    "Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning
    Models" (arXiv 2508.10751). A group of N samples with c correct (reward 1) is scored by
    the unbiased pass@k estimate R = 1 - C(N-c, k) / C(N, k), the mean reward of its
    k-subsets (a subset scores 1 if it holds a correct sample), with Bernoulli std
    sigma = sqrt(R (1 - R)). A sample's advantage is the mean reward of the k-subsets that
    contain it, minus R, over sigma:

    - correct samples:   A_pos = (1 - R) / sigma (every subset holding them scores 1);
    - incorrect samples: A_neg = (1 - R - C(N-c-1, k-1) / C(N-1, k-1)) / sigma (the ratio is
      the share of their subsets that hold no correct sample).

    sigma = 0 (no correct sample, or fewer than k incorrect ones so that every k-subset
    passes) gives advantage 0. The advantages sum to 0 within a group. With k = 1, R = c/N and
    the advantages are (r_i - mean(r_group)) / std(r_group) with the *population* std, i.e.
    GRPO without Bessel's correction.

    Rewards must be 0 or 1 and every group must have at least k samples (``ConfigError``
    otherwise). Not confirmed from the project's paper digests (the paper is not in them): the
    formulas above follow the request that added this entry and the derivation given here;
    the paper's equation numbers could not be checked.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"algorithm.advantage.params.k: passk needs an integer k >= 1, got {k!r}")
    rewards = rewards.float()
    if not ((rewards == 0) | (rewards == 1)).all():
        bad = rewards[(rewards != 0) & (rewards != 1)][0].item()
        raise ConfigError(
            f"the passk advantage needs binary rewards (0 or 1), got {bad}; use a 0/1 reward "
            "such as the task verifier, or another advantage"
        )
    n = group_count(group, torch.float64)
    if rewards.numel() and n.min().item() < k:
        raise ConfigError(
            f"algorithm.advantage.params.k: passk with k={k} needs at least k completions per "
            f"prompt, but a group has {int(n.min().item())}; raise rollout.num_generations or "
            "lower k"
        )
    correct = group_sum(rewards.double(), group)
    wrong = n - correct
    pass_k = 1.0 - _binom_ratio(wrong, n, k)
    sigma = (pass_k * (1.0 - pass_k)).sqrt()
    all_wrong_share = _binom_ratio(wrong - 1, n - 1, k - 1)
    raw = torch.where(rewards.bool(), 1.0 - pass_k, 1.0 - pass_k - all_wrong_share)
    adv = torch.where(sigma > 0, raw / torch.where(sigma > 0, sigma, 1.0), 0.0)
    return _per_token(adv.to(rewards.dtype), mask)
