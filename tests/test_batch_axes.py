"""Reward transforms, batch filters, token masks, mismatch corrections and coefficient controllers.

Each function has a hand-computed case (arithmetic in the comments) and properties checked on
seeded random batches with groups in any order and of different sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.algorithms.controllers import (
    adaptive_entropy_coef,
    adaptive_kl_coef,
    entropy_bonus_active,
)
from rewardlab.algorithms.corrections import CORRECTIONS, tis
from rewardlab.algorithms.filters import BATCH_FILTERS, dynamic_sampling, pf_ppo
from rewardlab.algorithms.reward_transforms import (
    REWARD_TRANSFORMS,
    default_cache_len,
    overlong_penalty,
    rank_within_group,
    unlikely,
)
from rewardlab.algorithms.token_masks import TOKEN_MASKS, top_count, top_entropy, truncated
from rewardlab.batch import RolloutBatch
from rewardlab.errors import ConfigError


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def random_groups(seed: int, n_groups: int = 5, max_size: int = 6) -> torch.Tensor:
    """Group ids with sizes 1..max_size, arbitrary id values, rows shuffled."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (n_groups,), generator=gen)
    ids = torch.randperm(100, generator=gen)[:n_groups]
    group = torch.repeat_interleave(ids, sizes)
    return group[torch.randperm(group.numel(), generator=gen)]


# =========================================================================== overlong_penalty
#
# max_len = L_max = 10, cache_len = L_cache = 4, so the soft zone is 6 < |y| <= 10.
#   |y| = 3:  3 <= 6                         -> +0       reward 1 -> 1
#   |y| = 6:  6 <= 6 (edge of the safe zone) -> +0       reward 1 -> 1
#   |y| = 7:  (6 - 7) / 4 = -0.25            -> -0.25    reward 1 -> 0.75
#   |y| = 8:  (6 - 8) / 4 = -0.5             -> -0.5     reward 0 -> -0.5
#   |y| = 10: (6 - 10) / 4 = -1              -> -1       reward 1 -> 0
#   |y| = 12: beyond L_max                   -> -1       reward 0 -> -1
# With penalty = 0.5 every shaping term halves: [1, 1, 0.875, -0.25, 0.5, -0.5].
def test_overlong_penalty_hand_computed():
    rewards = t([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    lengths = torch.tensor([3, 6, 7, 8, 10, 12])
    out = overlong_penalty(rewards, lengths, 10, cache_len=4)
    torch.testing.assert_close(out, t([1.0, 1.0, 0.75, -0.5, 0.0, -1.0]))
    half = overlong_penalty(rewards, lengths, 10, cache_len=4, penalty=0.5)
    torch.testing.assert_close(half, t([1.0, 1.0, 0.875, -0.25, 0.5, -0.5]))


def test_overlong_penalty_zero_below_linear_inside_full_beyond():
    max_len, cache, penalty = 40, 8, 0.7
    lengths = torch.arange(0, 61)
    shaping = overlong_penalty(torch.zeros(61), lengths, max_len, cache_len=cache, penalty=penalty)
    safe = lengths <= max_len - cache
    zone = (lengths > max_len - cache) & (lengths <= max_len)
    beyond = lengths > max_len
    assert (shaping[safe] == 0).all()
    # linear in the zone: each extra token costs penalty / cache, ending at -penalty
    steps = shaping[zone].diff()
    torch.testing.assert_close(steps, torch.full_like(steps, -penalty / cache))
    torch.testing.assert_close(shaping[lengths == max_len], t([-penalty]))
    torch.testing.assert_close(shaping[beyond], torch.full_like(shaping[beyond], -penalty))


def test_overlong_penalty_default_cache_and_bad_params():
    # DAPO: 20480 tokens with a 4096-token cache = one fifth; 20 -> 4; tiny budgets -> 1
    assert default_cache_len(20480) == 4096
    assert default_cache_len(20) == 4
    assert default_cache_len(3) == 1
    out = overlong_penalty(t([0.0, 0.0]), torch.tensor([16, 18]), 20)  # zone 16 < |y| <= 20
    torch.testing.assert_close(out, t([0.0, -0.5]))  # (16 - 18) / 4
    for bad in (0, 21, 2.5):
        with pytest.raises(ConfigError, match=r"algorithm.reward_transforms\[\].params.cache_len"):
            overlong_penalty(t([0.0]), torch.tensor([1]), 20, cache_len=bad)
    with pytest.raises(ConfigError, match="penalty"):
        overlong_penalty(t([0.0]), torch.tensor([1]), 20, penalty=-1.0)


# =========================================================================== unlikely
#
# group = [0, 0, 0, 0, 1, 1], rewards = [1, 1, 0, 1, 1, 1], beta_rank = 0.5.
# Mean log-prob over real tokens (row 0's padded -100 is ignored):
#   group 0: [-0.5, -2.0, -1.0, -0.1] -> ascending ranks [2, 0, 1, 3], G = 4
#            r' = r * (1 - 0.5 * rank / 4) = [1 - 1/4, 1 - 0, (incorrect: 0), 1 - 3/8]
#                = [0.75, 1.0, 0.0, 0.625]
#   group 1: [-1.0, -1.0] tie -> row 4 gets rank 0, row 5 rank 1 (lower index first), G = 2
#            r' = [1.0, 1 - 0.5 * 1 / 2] = [1.0, 0.75]
def _unlikely_case():
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    rewards = t([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    old_logp = t(
        [
            [-0.5, -0.5, -100.0],
            [-2.0, -2.0, -2.0],
            [-1.0, -1.0, -1.0],
            [-0.1, -0.1, -0.1],
            [-1.5, -0.5, -1.0],
            [-1.0, -1.0, -1.0],
        ]
    )
    mask = t([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    return rewards, group, old_logp, mask


def test_unlikely_hand_computed():
    rewards, group, old_logp, mask = _unlikely_case()
    out = unlikely(rewards, group, old_logp, mask, beta_rank=0.5)
    torch.testing.assert_close(out, t([0.75, 1.0, 0.0, 0.625, 1.0, 0.75]))


def test_unlikely_threshold_spares_partial_rewards_and_default_beta():
    # rows 0 and 3 swapped to 0.3 (below the 0.5 threshold): unchanged, the others as above
    rewards, group, old_logp, mask = _unlikely_case()
    rewards[0], rewards[3] = 0.3, 0.3
    out = unlikely(rewards, group, old_logp, mask, beta_rank=0.5)
    torch.testing.assert_close(out, t([0.3, 1.0, 0.0, 0.3, 1.0, 0.75]))
    # the authors' rank_penalty 0.25 is the default: row 3 (rank 3 of 4) -> 1 - 0.25 * 3/4
    default = unlikely(*_unlikely_case())
    assert default[3].item() == pytest.approx(1 - 0.25 * 3 / 4)


def _unlikely_reference(rewards, group, old_logp, mask, beta_rank, threshold):
    """Loop over groups, as the authors' code does (double argsort on the group's likelihoods)."""
    seq = (old_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    out = rewards.clone()
    for g in group.unique():
        rows = (group == g).nonzero().flatten()
        ranks = torch.argsort(torch.argsort(seq[rows], stable=True), stable=True)
        scaled = rewards[rows] * (1 - beta_rank * ranks.float() / rows.numel())
        out[rows] = torch.where(rewards[rows] > threshold, scaled, rewards[rows])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_unlikely_properties(seed):
    group = random_groups(seed)
    gen = torch.Generator().manual_seed(seed)
    b = group.numel()
    rewards = torch.randint(0, 2, (b,), generator=gen).float()
    old_logp = -torch.rand(b, 5, generator=gen) * 3
    mask = (torch.arange(5)[None, :] < torch.randint(1, 6, (b, 1), generator=gen)).float()
    out = unlikely(rewards, group, old_logp, mask, beta_rank=0.3)
    # incorrect rewards untouched; correct ones only scaled down, by at most beta_rank
    wrong = rewards <= 0.5
    assert torch.equal(out[wrong], rewards[wrong])
    assert (out[~wrong] <= rewards[~wrong]).all()
    assert (out[~wrong] >= rewards[~wrong] * (1 - 0.3)).all()
    # identity with beta_rank = 0
    assert torch.equal(unlikely(rewards, group, old_logp, mask, beta_rank=0.0), rewards)
    # vectorized == per-group loop
    expected = _unlikely_reference(rewards, group, old_logp, mask, 0.3, 0.5)
    torch.testing.assert_close(out, expected)


def test_rank_within_group_is_a_permutation_per_group():
    group = torch.tensor([4, 9, 4, 4, 9, 1])
    values = t([0.5, -1.0, 0.5, -2.0, 3.0, 7.0])
    # group 4: rows 0, 2, 3 with values 0.5, 0.5, -2 -> row 3 rank 0, then the tie: row 0 rank 1,
    #          row 2 rank 2; group 9: rows 1, 4 -> ranks 0, 1; group 1: row 5 -> rank 0
    assert rank_within_group(values, group).tolist() == [1, 0, 2, 0, 1, 0]


def test_unlikely_bad_beta_rank():
    with pytest.raises(ConfigError, match=r"algorithm.reward_transforms\[\].params.beta_rank"):
        unlikely(*_unlikely_case(), beta_rank=1.5)


# =========================================================================== dynamic_sampling
#
# group = [5, 5, 5, 2, 2, 9, 7, 7], rewards = [1, 0, 1, 1, 1, 0, 0.5, 0.5]
#   group 5: max 1 - min 0 = 1 > 0  -> keep rows 0-2
#   group 2: 1 - 1 = 0              -> drop (all correct)
#   group 9: one row, spread 0      -> drop
#   group 7: 0.5 - 0.5 = 0          -> drop
def test_dynamic_sampling_hand_computed():
    group = torch.tensor([5, 5, 5, 2, 2, 9, 7, 7])
    rewards = t([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    keep = dynamic_sampling(rewards, group)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, True, True, False, False, False, False, False]


def test_dynamic_sampling_eps():
    # spread 0.15 - 0.1 = 0.05: kept with eps 0.01, dropped with eps 0.1
    group = torch.tensor([0, 0])
    rewards = t([0.1, 0.15])
    assert dynamic_sampling(rewards, group, eps=0.01).all()
    assert not dynamic_sampling(rewards, group, eps=0.1).any()
    with pytest.raises(ConfigError, match="algorithm.batch_filter.params.eps"):
        dynamic_sampling(rewards, group, eps=-1.0)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_sampling_drops_exactly_constant_groups(seed):
    group = random_groups(seed)
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (group.numel(),), generator=gen).float()
    keep = dynamic_sampling(rewards, group)
    for g in group.unique():
        rows = group == g
        constant = bool((rewards[rows] == rewards[rows][0]).all())
        assert (keep[rows] == (not constant)).all()


# =========================================================================== pf_ppo
#
# group = [3, 3, 3, 3, 8, 8, 8], rewards = [0.2, 0.9, 0.9, 0.1, 0.5, 0.5, 0.5]
#   group 3: best = row 1 (0.9, lower index of the tie with row 2); worst = row 3 (0.1)
#   group 8: all 0.5: best = row 4 (lowest index); worst among the others = row 5
#   best_worst -> rows {1, 3, 4, 5};  best -> rows {1, 4}
PF_GROUP = torch.tensor([3, 3, 3, 3, 8, 8, 8])
PF_REWARDS = t([0.2, 0.9, 0.9, 0.1, 0.5, 0.5, 0.5])


def test_pf_ppo_hand_computed():
    best_worst = pf_ppo(PF_REWARDS, PF_GROUP, 0, strategy="best_worst")
    assert best_worst.nonzero().flatten().tolist() == [1, 3, 4, 5]
    best = pf_ppo(PF_REWARDS, PF_GROUP, 0, strategy="best")
    assert best.nonzero().flatten().tolist() == [1, 4]
    best_random = pf_ppo(PF_REWARDS, PF_GROUP, 0, strategy="best_random")
    assert best_random[1] and best_random[4]
    assert best_random[:4].sum() == 2 and best_random[4:].sum() == 2


def test_pf_ppo_best_random_is_seeded_and_local():
    state = torch.random.get_rng_state()
    first = pf_ppo(PF_REWARDS, PF_GROUP, 123, strategy="best_random")
    assert torch.equal(first, pf_ppo(PF_REWARDS, PF_GROUP, 123, strategy="best_random"))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not used
    # over several seeds the random partner of group 3 is not always the same row
    partners = {
        int(pf_ppo(PF_REWARDS, PF_GROUP, s, strategy="best_random")[[0, 2, 3]].nonzero()[0])
        for s in range(20)
    }
    assert len(partners) > 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", ["best_worst", "best_random", "best"])
def test_pf_ppo_counts_and_best(seed, strategy):
    group = random_groups(seed)
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 4, (group.numel(),), generator=gen).float()  # many ties
    keep = pf_ppo(rewards, group, seed, strategy=strategy)
    assert torch.equal(keep, pf_ppo(rewards, group, seed, strategy=strategy))
    for g in group.unique():
        rows = (group == g).nonzero().flatten()
        kept = rows[keep[rows]]
        want = 1 if strategy == "best" or rows.numel() == 1 else 2
        assert kept.numel() == want
        best = rows[rewards[rows] == rewards[rows].max()][0]  # lowest-index best
        assert best in kept.tolist()
        if strategy == "best_worst" and rows.numel() > 1:
            others = rows[rows != best]
            worst = others[rewards[others] == rewards[others].min()][0]
            assert sorted(kept.tolist()) == sorted([int(best), int(worst)])


def test_pf_ppo_bad_strategy():
    with pytest.raises(ConfigError) as info:
        pf_ppo(PF_REWARDS, PF_GROUP, 0, strategy="worst")
    message = str(info.value)
    assert "algorithm.batch_filter.params.strategy" in message
    assert "best_worst" in message and "best_random" in message and "'worst'" in message


# =========================================================================== top_entropy
#
# entropy = [[0.1, 0.9, 0.5, 7.0], [0.8, 0.2, 0.9, 0.3]], mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
# n_real = 7 (the 7.0 is padding and never counts).
#   top_fraction 0.5: k = ceil(3.5) = 4 -> 0.9 (0,1), 0.9 (1,2), 0.8 (1,0), 0.5 (0,2)
#   top_fraction 0.2: k = ceil(1.4) = 2 -> the two 0.9s
ENT = t([[0.1, 0.9, 0.5, 7.0], [0.8, 0.2, 0.9, 0.3]])
ENT_MASK = t([[1, 1, 1, 0], [1, 1, 1, 1]])


def test_top_entropy_hand_computed():
    half = top_entropy(ENT, ENT_MASK, top_fraction=0.5)
    assert half.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0]]
    assert half.dtype == ENT_MASK.dtype
    default = top_entropy(ENT, ENT_MASK)
    assert default.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]


def test_top_entropy_ties_by_position():
    # five real tokens of equal entropy, fraction 0.4 -> k = 2: the first two in row-major order
    entropy = torch.ones(2, 3)
    mask = t([[0, 1, 1], [1, 1, 1]])
    assert top_entropy(entropy, mask, top_fraction=0.4).tolist() == [[0, 1, 1], [0, 0, 0]]


def test_top_count():
    assert top_count(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point
    assert top_count(0.2, 7) == 2  # ceil(1.4)
    assert top_count(0.01, 5) == 1  # at least one token
    assert top_count(1.0, 9) == 9
    assert top_count(0.2, 0) == 0


@pytest.mark.parametrize("seed", range(6))
def test_top_entropy_properties(seed):
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(6, 9, generator=gen) * 3
    mask = (torch.arange(9)[None, :] < torch.randint(0, 10, (6, 1), generator=gen)).long()
    n_real = int(mask.sum())
    keep = top_entropy(entropy, mask, top_fraction=0.2)
    assert int(keep.sum()) == (math.ceil(0.2 * n_real) if n_real else 0)
    assert ((keep == 1) <= (mask == 1)).all()  # only real tokens
    dropped = (mask == 1) & (keep == 0)
    if keep.any() and dropped.any():
        assert entropy[keep == 1].min() >= entropy[dropped].max()


def test_top_entropy_edge_cases():
    empty = top_entropy(ENT, torch.zeros_like(ENT_MASK))
    assert empty.sum() == 0
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"algorithm.token_masks\[\].params.top_fraction"):
            top_entropy(ENT, ENT_MASK, top_fraction=bad)


# =========================================================================== truncated
#
# mask = [[1, 1, 0], [1, 1, 1], [1, 0, 0]], truncated = [F, T, F]: row 1 hit the budget and
# loses every token; the others keep theirs.
def test_truncated_mask():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = truncated(mask, torch.tensor([False, True, False]))
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert out.dtype == mask.dtype
    assert torch.equal(truncated(mask, torch.zeros(3, dtype=torch.bool)), mask)


# =========================================================================== tis
#
# Row 0: old_logp = [0, ln 1.5, ln 3], sampling_logp = 0, all real.
#   token ratios [1, 1.5, 3]; sequence ratio 1 * 1.5 * 3 = 4.5.
# Row 1: old_logp = [ln 0.5, ln 1.2, 5 (pad)], sampling_logp = [0, 0, -3 (pad)], mask [1, 1, 0].
#   token ratios [0.5, 1.2, -]; sequence ratio 0.5 * 1.2 = 0.6; padding -> 0.
# cap = 2:
#   token, truncate:    [[1, 1.5, 2],   [0.5, 1.2, 0]],  truncated [[0, 0, 1], [0, 0, 0]]
#   token, mask:        [[1, 1.5, 0],   [0.5, 1.2, 0]],  masked    [[0, 0, 1], [0, 0, 0]]
#   sequence, truncate: [[2, 2, 2],     [0.6, 0.6, 0]],  truncated [[1, 1, 1], [0, 0, 0]]
#   sequence, mask:     [[0, 0, 0],     [0.6, 0.6, 0]],  masked    [[1, 1, 1], [0, 0, 0]]
LN = math.log
TIS_OLD = t([[0.0, LN(1.5), LN(3.0)], [LN(0.5), LN(1.2), 5.0]])
TIS_SAMPLING = t([[0.0, 0.0, 0.0], [0.0, 0.0, -3.0]])
TIS_MASK = t([[1, 1, 1], [1, 1, 0]])
TIS_CASES = {
    ("token", "truncate"): ([[1, 1.5, 2], [0.5, 1.2, 0]], [[0, 0, 1], [0, 0, 0]]),
    ("token", "mask"): ([[1, 1.5, 0], [0.5, 1.2, 0]], [[0, 0, 1], [0, 0, 0]]),
    ("sequence", "truncate"): ([[2, 2, 2], [0.6, 0.6, 0]], [[1, 1, 1], [0, 0, 0]]),
    ("sequence", "mask"): ([[0, 0, 0], [0.6, 0.6, 0]], [[1, 1, 1], [0, 0, 0]]),
}


@pytest.mark.parametrize(("level", "mode"), sorted(TIS_CASES))
def test_tis_hand_computed(level, mode):
    expected_w, expected_flag = TIS_CASES[(level, mode)]
    weights, metrics = tis(TIS_OLD, TIS_SAMPLING, TIS_MASK, level=level, mode=mode, cap=2.0)
    torch.testing.assert_close(weights, t(expected_w))
    flag = metrics["truncated" if mode == "truncate" else "masked"]
    torch.testing.assert_close(flag, t(expected_flag))
    raw = [[1, 1.5, 3], [0.5, 1.2, 0]] if level == "token" else [[4.5] * 3, [0.6, 0.6, 0]]
    torch.testing.assert_close(metrics["raw_weight"], t(raw))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_identity_when_engines_agree(level):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=gen) * 4
    mask = (torch.arange(6)[None, :] < torch.tensor([[6], [3], [1], [0]])).float()
    weights, metrics = tis(logp, logp.clone(), mask, level=level)
    assert torch.equal(weights, mask)
    assert metrics["truncated"].sum() == 0


@pytest.mark.parametrize("seed", range(4))
def test_tis_sequence_is_product_of_token_weights_and_detached(seed):
    gen = torch.Generator().manual_seed(seed)
    old = (-torch.rand(5, 7, generator=gen) * 2).requires_grad_()
    sampling = old.detach() + (torch.rand(5, 7, generator=gen) - 0.5) * 0.2
    mask = (torch.arange(7)[None, :] < torch.randint(1, 8, (5, 1), generator=gen)).float()
    token_w, _ = tis(old, sampling, mask, level="token", cap=1e6)
    seq_w, _ = tis(old, sampling, mask, level="sequence", cap=1e6)
    product = torch.where(mask.bool(), token_w, torch.ones_like(token_w)).prod(-1)
    torch.testing.assert_close(seq_w, product[:, None] * mask, rtol=1e-5, atol=1e-6)
    assert not token_w.requires_grad and not seq_w.requires_grad
    # truncate caps every weight at the cap; mask zeroes exactly the ones above it
    capped, _ = tis(old, sampling, mask, level="token", cap=1.02)
    assert capped.max() <= 1.02
    dropped, info = tis(old, sampling, mask, level="token", mode="mask", cap=1.02)
    over = (token_w > 1.02) & mask.bool()
    assert torch.equal(dropped == 0, over | ~mask.bool())
    assert torch.equal(info["masked"].bool(), over)


def test_tis_bad_params():
    for params, key in (
        ({"level": "geometric"}, "level"),
        ({"mode": "clip"}, "mode"),
        ({"cap": 0.0}, "cap"),
    ):
        with pytest.raises(ConfigError, match=f"algorithm.correction.params.{key}"):
            tis(TIS_OLD, TIS_SAMPLING, TIS_MASK, **params)


# =========================================================================== controllers
#
# adaptive KL, coef 0.1, target 0.1, n_steps 64, horizon 6400 -> K = 0.01:
#   KL 0.15: e = clip(1.5 - 1) = clip(0.5) = 0.2 -> 0.1 * (1 + 0.002) = 0.1002
#   KL 0.09: e = -0.1                           -> 0.1 * (1 - 0.001) = 0.0999
#   KL 0.10: e = 0                              -> 0.1
#   KL 0:    e = clip(-1) = -0.2                -> 0.1 * (1 - 0.002) = 0.0998
def test_adaptive_kl_coef():
    kw = {"target": 0.1, "horizon": 6400, "n_steps": 64}
    assert adaptive_kl_coef(0.1, 0.15, **kw) == pytest.approx(0.1002)
    assert adaptive_kl_coef(0.1, 0.09, **kw) == pytest.approx(0.0999)
    assert adaptive_kl_coef(0.1, 0.10, **kw) == pytest.approx(0.1)
    assert adaptive_kl_coef(0.1, 0.0, **kw) == pytest.approx(0.0998)
    # the error is clipped: any KL far above the target moves the coefficient by the same factor
    assert adaptive_kl_coef(0.1, 5.0, **kw) == adaptive_kl_coef(0.1, 50.0, **kw)
    with pytest.raises(ConfigError, match="target"):
        adaptive_kl_coef(0.1, 0.1, target=0.0, horizon=10, n_steps=1)


# adaptive entropy, target 0.2, delta 0.0005, max 0.005:
#   entropy 0.1 < 0.2:  0.001 + 0.0005 = 0.0015
#   entropy 0.3 > 0.2:  0.001 - 0.0005 = 0.0005
#   entropy 0.2 (equal): decreases, as in the authors' code -> 0.0005
#   0.0002 - 0.0005 < 0 -> 0;  0.0048 + 0.0005 > 0.005 -> 0.005;  no max -> 0.0053
def test_adaptive_entropy_coef():
    kw = {"target": 0.2, "delta": 0.0005, "max_coef": 0.005}
    assert adaptive_entropy_coef(0.001, 0.1, **kw) == pytest.approx(0.0015)
    assert adaptive_entropy_coef(0.001, 0.3, **kw) == pytest.approx(0.0005)
    assert adaptive_entropy_coef(0.001, 0.2, **kw) == pytest.approx(0.0005)
    assert adaptive_entropy_coef(0.0002, 0.3, **kw) == 0.0
    assert adaptive_entropy_coef(0.0048, 0.1, **kw) == 0.005
    unbounded = {"target": 0.2, "delta": 0.0005, "max_coef": None}
    assert adaptive_entropy_coef(0.0048, 0.1, **unbounded) == pytest.approx(0.0053)
    assert entropy_bonus_active(0.1, 0.2) and not entropy_bonus_active(0.2, 0.2)
    with pytest.raises(ConfigError, match="delta"):
        adaptive_entropy_coef(0.001, 0.1, target=0.2, delta=-1.0, max_coef=None)


# =========================================================================== registries


def test_registries_list_their_entries_with_papers():
    expected = {
        REWARD_TRANSFORMS: {"overlong_penalty": "2503.14476", "unlikely": "2506.02355"},
        BATCH_FILTERS: {"dynamic_sampling": "2503.14476", "pf_ppo": "2409.06957"},
        TOKEN_MASKS: {"top_entropy": "2506.01939", "truncated": "2503.14476"},
        CORRECTIONS: {"tis": None},
    }
    for registry, entries in expected.items():
        # reward transforms also hold the reward-shaping entries (tests/test_reward_shaping.py)
        assert set(registry.names()) >= set(entries)
        for name, arxiv in entries.items():
            entry = registry.get(name)
            assert entry.arxiv == arxiv and entry.paper and entry.formula
    assert REWARD_TRANSFORMS.get("overlong_penalty").inputs == ("rewards", "lengths", "max_len")
    assert BATCH_FILTERS.get("pf_ppo").params == {"strategy": "best_worst"}
    assert CORRECTIONS.get("tis").params == {"level": "token", "mode": "truncate", "cap": 2.0}


def test_every_entry_runs_on_batch_fields():
    """Each entry's inputs are batch fields (RolloutBatch.axis_fields) or the two the trainer
    adds (max_len, seed), so Registry.call can run it."""
    b, width = 4, 3
    batch = RolloutBatch(
        prompt_ids=torch.zeros(b, 2, dtype=torch.long),
        prompt_mask=torch.ones(b, 2, dtype=torch.long),
        completion_ids=torch.zeros(b, width, dtype=torch.long),
        completion_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]),
        group=torch.tensor([0, 0, 1, 1]),
        truncated=torch.tensor([True, False, False, True]),
        rewards=t([1.0, 0.0, 1.0, 1.0]),
        old_logp=-torch.ones(b, width),
        sampling_logp=-torch.ones(b, width),
        entropy=torch.rand(b, width),
    )
    fields = {**batch.axis_fields(), "max_len": width, "seed": 7, "state": {}, "reference_rewards": None}
    required = {"clip": {"max": 0.5}}  # the one entry without usable defaults
    for registry in (REWARD_TRANSFORMS, BATCH_FILTERS, TOKEN_MASKS, CORRECTIONS):
        for entry in registry:
            out = registry.call(entry.name, fields, required.get(entry.name, {}))
            first = out[0] if isinstance(out, tuple) else out
            assert first.shape[0] == b
