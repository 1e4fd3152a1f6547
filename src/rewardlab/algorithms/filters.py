"""Batch filters: per-completion rewards and group ids -> a bool keep-mask [B] over completions.

A filter only says which rows to keep; the trainer drops the others (and, for DAPO's dynamic
sampling, samples more prompts until the batch is full or a limit is reached). Everything is
vectorized over groups: sorts and scatters, no Python loop over prompts.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import group_index
from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

BATCH_FILTERS = Registry("batch_filter")

_WHERE = "algorithm.batch_filter.params"

PF_PPO_STRATEGIES = ("best_worst", "best_random", "best")


@BATCH_FILTERS.register(
    "dynamic_sampling",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale (dynamic sampling)",
    arxiv="2503.14476",
    formula="keep group g iff max_{i in g} r_i - min_{i in g} r_i > eps",
)
def dynamic_sampling(
    rewards: torch.Tensor, group: torch.Tensor, *, eps: float = 0.0
) -> torch.Tensor:
    """DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): drop the prompts whose
    completions all got the same reward.

    Such a group (all correct or all wrong) has a group-relative advantage of 0 for every
    completion and contributes no gradient, only noise in the batch size. DAPO's objective
    keeps a prompt only if 0 < |{correct completions}| < G; for real-valued rewards this is
    "the rewards of the group are not all equal", here max - min > ``eps`` (``eps = 0``: any
    spread at all). The trainer refills the batch: it samples more prompts until the batch is
    full or its limit on rounds is reached.

    A group of a single completion has no spread and is dropped. verl's DAPO recipe keeps such
    groups (``std > 0 or len == 1``); here they are dropped because every group-relative
    advantage of this library gives a lone completion 0 anyway.
    """
    if eps < 0:
        raise ConfigError(f"{_WHERE}.eps: dynamic_sampling needs eps >= 0, got {eps!r}")
    rewards = rewards.float()
    index, n = group_index(group)
    top = rewards.new_zeros(n).scatter_reduce(0, index, rewards, "amax", include_self=False)
    bottom = rewards.new_zeros(n).scatter_reduce(0, index, rewards, "amin", include_self=False)
    return ((top - bottom) > eps)[index]


def first_in_group(key: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Bool [B]: True on the row with the smallest ``key`` of each group.

    Ties are broken by row index (the lowest index wins): a stable sort by key, then a stable
    sort by group, puts each group's rows in (key, index) order; the first row of each run
    is the winner.
    """
    index, _ = group_index(group)
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(index[order], stable=True)]
    sorted_index = index[order]
    starts = torch.ones_like(sorted_index, dtype=torch.bool)
    starts[1:] = sorted_index[1:] != sorted_index[:-1]
    picked = torch.zeros_like(index, dtype=torch.bool)
    picked[order[starts]] = True
    return picked


@BATCH_FILTERS.register(
    "pf_ppo",
    paper="Policy Filtration in RLHF to Fine-Tune LLM for Code Generation (PF-PPO; v5: Policy "
    "Filtration for RLHF to Mitigate Noise in Reward Models)",
    arxiv="2409.06957",
    formula="per group keep argmax_i r_i and: argmin_{i != best} r_i (best_worst) | a uniformly "
    "random i != best (best_random) | nothing else (best)",
)
def pf_ppo(
    rewards: torch.Tensor, group: torch.Tensor, seed: int, *, strategy: str = "best_worst"
) -> torch.Tensor:
    """PF-PPO policy filtration (Zhang and Shen et al., arXiv 2409.06957).

    A reward model is more reliable at some reward levels than others; PF-PPO samples N
    completions per prompt and trains only on those whose reward is most trustworthy. Within
    each group (prompt) this keeps:

    - ``"best_worst"``: the highest-reward and the lowest-reward completion (2 rows per group);
    - ``"best_random"``: the highest-reward completion and one other, uniformly at random
      (2 rows per group);
    - ``"best"``: only the highest-reward completion (best-of-N, 1 row per group).

    Ties are broken deterministically by row index: the best is the lowest-index row among the
    highest rewards, the worst the lowest-index row among the lowest rewards *of the other
    rows*, so a group whose rewards are all equal still keeps two distinct rows (its first two).
    A group of one completion keeps that one row under every strategy. The random choice of
    ``best_random`` draws from a local ``torch.Generator`` seeded with ``seed`` (an int the
    trainer passes, e.g. derived from the run seed and the step), so a fixed seed and batch
    give the same rows and the global RNG is not touched.

    Confirmed from the paper's abstract and project digests: the arXiv id, the idea (filter
    samples whose rewards are unreliable) and that the strategy is chosen by the R^2 between
    rewards and actual scores on the filtered samples. The three strategy names (best-of-N,
    best-random, best-worst) come from the project's digest, recalled rather than read from
    the method section; whether the paper's "random" may re-draw the best completion, and its
    tie-breaking, were not confirmed. The R^2-based choice of strategy is an offline
    analysis, not part of this function.
    """
    if strategy not in PF_PPO_STRATEGIES:
        raise ConfigError(
            f"{_WHERE}.strategy: unknown pf_ppo strategy {strategy!r}; "
            f"choose one of: {', '.join(PF_PPO_STRATEGIES)}"
        )
    rewards = rewards.float()
    best = first_in_group(-rewards, group)
    if strategy == "best":
        return best
    inf = torch.full_like(rewards, float("inf"))
    if strategy == "best_worst":
        other = first_in_group(torch.where(best, inf, rewards), group)
    else:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        draw = torch.rand(rewards.shape, generator=generator).to(rewards.device)
        other = first_in_group(torch.where(best, inf, draw), group)
    # In a group of one the only row is the best; it is the "first" of the others too.
    return best | (other & ~best)
