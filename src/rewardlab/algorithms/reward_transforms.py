"""Reward transforms: per-completion rewards [B] -> new rewards [B], applied before the advantage.

Each entry reads the rewards and whatever batch fields it names (``lengths``, ``max_len``,
``group``, ``old_logp``, ``mask``) and returns a float tensor of shape [B]. None of them keeps a
gradient: rewards and the old policy's log-probs are data, not parameters.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import group_count, group_index
from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

REWARD_TRANSFORMS = Registry("reward_transform")

_WHERE = "algorithm.reward_transforms[].params"

# DAPO's run: L_max = 20480 with a soft-punish cache of 4096, i.e. one fifth of the budget.
DEFAULT_CACHE_FRACTION = 5


def default_cache_len(max_len: int) -> int:
    """The soft-punishment window used when ``cache_len`` is not given: one fifth of the budget
    (DAPO's 4096 of 20480), at least one token."""
    return max(1, int(max_len) // DEFAULT_CACHE_FRACTION)


@REWARD_TRANSFORMS.register(
    "overlong_penalty",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale (soft overlong "
    "punishment)",
    arxiv="2503.14476",
    formula="r' = r + penalty * clip(((L_max - L_cache) - |y|) / L_cache, -1, 0): 0 for "
    "|y| <= L_max - L_cache, linear in the cache zone, -penalty for |y| > L_max",
)
def overlong_penalty(
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    max_len: int,
    *,
    cache_len: int | None = None,
    penalty: float = 1.0,
) -> torch.Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476, section 3.4, eq. 13).

    With L_max = ``max_len`` (the generation budget) and L_cache = ``cache_len``, a completion
    of |y| = ``lengths`` tokens gets, added to its reward:

    - 0 if |y| <= L_max - L_cache;
    - ((L_max - L_cache) - |y|) / L_cache * penalty if L_max - L_cache < |y| <= L_max
      (from 0 down to -penalty, linearly);
    - -penalty if |y| > L_max.

    All three cases are one expression, penalty * clip(((L_max - L_cache) - |y|) / L_cache,
    -1, 0), continuous at both ends. ``penalty`` is verl's ``overlong_buffer.penalty_factor``
    (the paper's eq. 13 has penalty 1). With ``lengths = mask.sum(-1)`` a completion cannot be
    longer than the budget, so the last case is reached only at |y| = L_max.

    ``cache_len`` defaults to ``max_len // 5`` (at least 1): DAPO's run used L_max = 20480
    with L_cache = 4096, one fifth of the budget. The default is this project's choice, scaling
    that ratio to smaller budgets; DAPO fixed L_cache in tokens, not as a fraction.

    Confirmed: the piecewise formula, as TRL's ``get_soft_overlong_punishment`` writes it out
    citing DAPO eq. 13, and verl's DAPO recipe README (a penalty growing linearly from 0 to
    ``penalty_factor`` over the last ``overlong_buffer.len`` tokens of the budget). Not
    confirmed from the paper text itself (it could not be opened here): the equation number
    and the 20480 / 4096 setting, which come from the request that added this entry and from
    secondary sources.
    """
    budget = int(max_len)
    cache = default_cache_len(budget) if cache_len is None else cache_len
    if isinstance(cache, bool) or not isinstance(cache, int) or not 1 <= cache <= budget:
        raise ConfigError(
            f"{_WHERE}.cache_len: overlong_penalty needs an integer 1 <= cache_len <= max_len "
            f"({budget}), got {cache_len!r}"
        )
    if penalty < 0:
        raise ConfigError(
            f"{_WHERE}.penalty: overlong_penalty needs penalty >= 0 (it is subtracted), "
            f"got {penalty!r}"
        )
    rewards = rewards.float()
    soft = ((budget - cache) - lengths.to(rewards.dtype)) / cache
    return rewards + penalty * soft.clamp(min=-1.0, max=0.0)


# --------------------------------------------------------------------------- unlikeliness


def sequence_mean_logp(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-prob over each completion's real tokens, [B]; 0 for an empty completion."""
    weights = mask.to(logp.dtype)
    return (logp * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def rank_within_group(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's value within its group, ascending, [B] (long).

    The smallest value of a group gets rank 0. Equal values are ranked by row index (the lower
    index gets the lower rank), so the ranks of a group are exactly 0..G-1. Vectorized: two
    stable sorts (by value, then by group), no loop over groups.
    """
    index, n = group_index(group)
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(index[order], stable=True)]
    counts = torch.bincount(index, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    positions = torch.arange(values.numel(), device=values.device)
    ranks = torch.empty_like(positions)
    ranks[order] = positions - starts[index[order]]
    return ranks


@REWARD_TRANSFORMS.register(
    "unlikely",
    paper="Rewarding the Unlikely: Lifting GRPO Beyond Distribution Sharpening",
    arxiv="2506.02355",
    formula="rank_i = rank of mean_t log pi_old(y_i,t) in its group (0 = least likely); "
    "r'_i = r_i * (1 - beta_rank * rank_i / G) if r_i > threshold else r_i",
)
def unlikely(
    rewards: torch.Tensor,
    group: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta_rank: float = 0.25,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Unlikeliness reward (He, Fried and Welleck, arXiv 2506.02355).

    GRPO has a rank bias: it reinforces correct completions the policy already finds likely
    and neglects rare correct ones. The unlikeliness reward scales a correct completion's
    reward down by how likely it is among its group's samples:

        rank_i = rank of mean_t log pi_old(y_i,t) within the group, ascending (0 = least likely,
                 G - 1 = most likely),
        r'_i = r_i * (1 - beta_rank * rank_i / G)   for correct samples (r_i > threshold),
        r'_i = r_i                                  otherwise,

    then the usual GRPO normalization (use the ``grpo`` advantage after this transform).

    Confirmed from the authors' code (``AndreHe02/rewarding-unlikely-release``,
    ``RayLeanTrainer._compute_advantages``): the likelihood is the mean token log-prob under
    pi_old over the completion's real tokens; the rank is taken among *all* samples of the
    group (correct and incorrect), ascending, divided by the group size G (the number of
    samples of the prompt present in the batch); the reward is multiplied by
    (1 - rank_penalty * rank / G); their Lean script uses ``rank_penalty=0.25`` (the default
    here). Their rewards are binary (0/1), so the multiplication leaves incorrect samples at 0:
    that is what "scale correct rewards down" means there. Here the scaling is applied only to
    rewards above ``threshold`` so that non-binary rewards below it (partial credit, format
    penalties) are not rescaled; for 0/1 rewards this is identical to the authors' code.

    Ties in likelihood are ranked by row index (the authors' double ``argsort`` leaves their
    order unspecified). The paper's own equation could not be opened here; only the code was
    checked. ``beta_rank`` must lie in [0, 1], so that every scaled reward keeps its sign
    (the factor stays >= 1/G); ``beta_rank = 0`` is the identity.
    """
    if not 0.0 <= beta_rank <= 1.0:
        raise ConfigError(
            f"{_WHERE}.beta_rank: unlikely needs 0 <= beta_rank <= 1, got {beta_rank!r}"
        )
    rewards = rewards.float()
    likelihood = sequence_mean_logp(old_logp.detach().float(), mask)
    ranks = rank_within_group(likelihood, group).to(rewards.dtype)
    size = group_count(group, rewards.dtype)
    scaled = rewards * (1.0 - beta_rank * ranks / size)
    return torch.where(rewards > threshold, scaled, rewards)
