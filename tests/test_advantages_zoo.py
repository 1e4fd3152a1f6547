"""The advantage zoo beyond GRPO / Dr.GRPO / RLOO: REINFORCE, REINFORCE++, Lite PPO, OPO, pass@k.

Each estimator has a hand-computed case (arithmetic in the comments), the closed forms it
reduces to, and properties over random groups in any order and of different sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardlab.algorithms import RECIPES
from rewardlab.algorithms.advantages import (
    ADVANTAGES,
    dr_grpo,
    grpo,
    lite_ppo,
    opo,
    passk,
    reinforce,
    reinforce_pp,
)
from rewardlab.algorithms.groups import group_count, group_mean, group_std
from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig, load_config
from rewardlab.errors import ConfigError

SQRT5 = math.sqrt(5.0)
SQRT6 = math.sqrt(6.0)
SQRT_03 = math.sqrt(0.3)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def seq(adv: torch.Tensor) -> torch.Tensor:
    """The per-sequence value of a [B, T] advantage (column 0; mask of ones in these tests)."""
    return adv[:, 0]


# --------------------------------------------------------------------------- hand-computed
#
# Case A: group = [3, 3, 3, 7, 7], rewards = [1, 0, 0, 1, 1].
#   Batch: mean 3/5 = 0.6, deviations [0.4, -0.6, -0.6, 0.4, 0.4],
#          sum of squares 3 * 0.16 + 2 * 0.36 = 1.2, unbiased var 1.2 / 4 = 0.3, std sqrt(0.3).
#   reinforce:    r - 0.6 = [0.4, -0.6, -0.6, 0.4, 0.4]
#   reinforce_pp: (r - 0.6) / sqrt(0.3) = [0.4, -0.6, -0.6, 0.4, 0.4] / 0.547723
#                 = [0.730297, -1.095445, -1.095445, 0.730297, 0.730297]
#   reinforce_pp, group_baseline=True: group-centred x = [2/3, -1/3, -1/3, 0, 0] (group 3 has
#                 mean 1/3; group 7 is constant), batch mean of x 0, sum of squares
#                 4/9 + 1/9 + 1/9 = 2/3, unbiased var (2/3) / 4 = 1/6, std 1/sqrt(6):
#                 x * sqrt(6) = [2 sqrt6/3, -sqrt6/3, -sqrt6/3, 0, 0]
#                 = [1.632993, -0.816497, -0.816497, 0, 0]
#   lite_ppo:     group-centred [2/3, -1/3, -1/3, 0, 0] over the std of the raw rewards of the
#                 batch, sqrt(0.3): [2/(3 sqrt .3), -1/(3 sqrt .3), ..] = [1.217161, -0.608581,
#                 -0.608581, 0, 0]
CASE_A_GROUP = [3, 3, 3, 7, 7]
CASE_A_REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0]
CASE_A = {
    "reinforce": (reinforce, {}, [0.4, -0.6, -0.6, 0.4, 0.4]),
    "reinforce_pp": (
        reinforce_pp,
        {},
        [0.4 / SQRT_03, -0.6 / SQRT_03, -0.6 / SQRT_03, 0.4 / SQRT_03, 0.4 / SQRT_03],
    ),
    "reinforce_pp_baseline": (
        reinforce_pp,
        {"group_baseline": True},
        [2 * SQRT6 / 3, -SQRT6 / 3, -SQRT6 / 3, 0.0, 0.0],
    ),
    "lite_ppo": (
        lite_ppo,
        {},
        [2 / (3 * SQRT_03), -1 / (3 * SQRT_03), -1 / (3 * SQRT_03), 0.0, 0.0],
    ),
}


def _call(fn, rewards, group, mask, lengths=None, **params):
    fields = {"rewards": rewards, "group": group, "mask": mask, "lengths": lengths}
    names = [n for n in ("rewards", "group", "mask", "lengths") if n in _inputs(fn)]
    return fn(**{n: fields[n] for n in names}, **params)


def _inputs(fn):
    return next(e for e in ADVANTAGES if e.fn is fn).inputs


@pytest.mark.parametrize("case", sorted(CASE_A))
def test_hand_computed_case_a(case):
    fn, params, expected = CASE_A[case]
    mask = torch.ones(5, 3)
    adv = _call(fn, t(CASE_A_REWARDS), torch.tensor(CASE_A_GROUP), mask, **params)
    assert adv.shape == (5, 3)
    for col in range(3):
        torch.testing.assert_close(adv[:, col], t(expected), rtol=1e-5, atol=1e-6)


# OPO: group = [3, 3, 3, 7, 7], rewards = [1, 0, 0, 2, 0], lengths = [1, 2, 3, 4, 1].
#   group 3: b = (1*1 + 2*0 + 3*0) / (1 + 2 + 3) = 1/6; A = [5/6, -1/6, -1/6]
#            (dr_grpo would use the plain mean 1/3: [2/3, -1/3, -1/3]).
#   group 7: b = (4*2 + 1*0) / (4 + 1) = 8/5 = 1.6; A = [2 - 1.6, 0 - 1.6] = [0.4, -1.6]
#            (the long completion pulls the baseline towards its reward).
def test_opo_hand_computed_length_weighted_baseline():
    group = torch.tensor(CASE_A_GROUP)
    rewards = t([1.0, 0.0, 0.0, 2.0, 0.0])
    lengths = torch.tensor([1, 2, 3, 4, 1])
    mask = (torch.arange(4)[None, :] < lengths[:, None]).long()  # lengths = mask.sum(-1)
    adv = opo(rewards, group, mask, lengths)
    expected = t([5 / 6, -1 / 6, -1 / 6, 0.4, -1.6])
    torch.testing.assert_close(adv, expected[:, None] * mask.float(), rtol=1e-5, atol=1e-6)
    assert (adv[mask == 0] == 0).all()


# pass@k, k = 2, groups of sizes 4, 4, 4, 3 interleaved with unordered ids:
#   group 5: r = [1, 0, 0, 0], N = 4, c = 1:
#            R = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2, sigma = sqrt(1/2 * 1/2) = 1/2;
#            A_pos = (1 - 1/2) / (1/2) = 1;
#            A_neg = (1 - 1/2 - C(2,1)/C(3,1)) / (1/2) = (1/2 - 2/3) * 2 = -1/3.
#            Sum: 1 - 3 * 1/3 = 0.
#   group 2: r = [1, 0, 1, 0], c = 2:
#            R = 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6, sigma = sqrt(5/6 * 1/6) = sqrt(5)/6;
#            A_pos = (1/6) / (sqrt5/6) = 1/sqrt5 = 0.447214;
#            A_neg = (1/6 - C(1,1)/C(3,1)) / (sqrt5/6) = (1/6 - 1/3) * 6/sqrt5 = -1/sqrt5.
#   group 9: r = [1, 1, 0, 1], c = 3: C(1,2) = 0 so R = 1 (every pair holds a correct
#            sample), sigma = 0 -> all 0, the incorrect sample included.
#   group 1: r = [0, 0, 0], c = 0: R = 1 - C(3,2)/C(3,2) = 0, sigma = 0 -> all 0.
PASSK_GROUP = [5, 2, 5, 9, 2, 1, 5, 9, 2, 1, 9, 5, 2, 9, 1]
PASSK_REWARDS = [1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]
PASSK_EXPECTED = {
    (5, 1): 1.0,
    (5, 0): -1 / 3,
    (2, 1): 1 / SQRT5,
    (2, 0): -1 / SQRT5,
    (9, 1): 0.0,
    (9, 0): 0.0,
    (1, 0): 0.0,
}


def test_passk_hand_computed_k2_groups_in_any_order():
    group = torch.tensor(PASSK_GROUP)
    rewards = t(PASSK_REWARDS)
    assert group_count(group).tolist() == [4, 4, 4, 4, 4, 3, 4, 4, 4, 3, 4, 4, 4, 4, 3]
    adv = seq(passk(rewards, group, torch.ones(len(PASSK_GROUP), 2), k=2))
    expected = t([PASSK_EXPECTED[(g, int(r))] for g, r in zip(PASSK_GROUP, PASSK_REWARDS)])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    for row, g in enumerate(PASSK_GROUP):
        if g in (9, 1):
            assert adv[row].item() == 0.0


# pass@k, k = 3, one group of N = 5 with c = 1:
#   R = 1 - C(4,3)/C(5,3) = 1 - 4/10 = 0.6, sigma = sqrt(0.6 * 0.4) = sqrt(0.24) = 0.489898;
#   A_pos = 0.4 / sqrt(0.24) = sqrt(2/3) = 0.816497;
#   A_neg = (0.4 - C(3,2)/C(4,2)) / sqrt(0.24) = (0.4 - 0.5) / 0.489898 = -0.204124.
#   Sum: 0.816497 - 4 * 0.204124 = 0.
def test_passk_hand_computed_k3():
    adv = seq(passk(t([0, 0, 1, 0, 0]), torch.zeros(5, dtype=torch.long), torch.ones(5, 1), k=3))
    a_neg = -0.1 / math.sqrt(0.24)
    torch.testing.assert_close(
        adv, t([a_neg, a_neg, math.sqrt(2 / 3), a_neg, a_neg]), rtol=1e-6, atol=1e-7
    )


def _passk_reference(rewards: list[int], group: list[int], k: int) -> list[float]:
    """pass@k advantages by their definition: the mean pass@k reward of the k-subsets of the
    group that contain the sample, minus the mean over all k-subsets, over the Bernoulli std."""
    from itertools import combinations

    out = []
    for i, g in enumerate(group):
        members = [j for j, gj in enumerate(group) if gj == g]
        subsets = list(combinations(members, k))
        score = {s: float(any(rewards[j] for j in s)) for s in subsets}
        mean = sum(score.values()) / len(subsets)
        sigma = math.sqrt(mean * (1 - mean))
        mine = [v for s, v in score.items() if i in s]
        out.append((sum(mine) / len(mine) - mean) / sigma if sigma > 0 else 0.0)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.integers(min_value=k, max_value=7), min_size=1, max_size=3),
            st.randoms(use_true_random=False),
        )
    )
)
def test_passk_equals_brute_force_over_k_subsets(data):
    k, sizes, rnd = data
    group = [g * 10 - 7 for g, size in enumerate(sizes) for _ in range(size)]
    rewards = [rnd.randint(0, 1) for _ in group]
    order = list(range(len(group)))
    rnd.shuffle(order)
    group = [group[i] for i in order]
    adv = seq(passk(t(rewards), torch.tensor(group), torch.ones(len(group), 1), k=k))
    torch.testing.assert_close(adv, t(_passk_reference(rewards, group, k)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- closed forms

_group_and_rewards = st.integers(min_value=1, max_value=24).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(min_value=-3, max_value=50), min_size=n, max_size=n),
        st.lists(st.floats(min_value=-10, max_value=10, width=32), min_size=n, max_size=n),
    )
)


@settings(max_examples=100, deadline=None)
@given(_group_and_rewards, st.booleans())
def test_reinforce_and_reinforce_pp_have_zero_batch_mean(data, group_baseline):
    ids, values = data
    group, rewards = torch.tensor(ids), t(values)
    mask = torch.ones(len(ids), 2)
    plain = seq(reinforce(rewards, mask))
    normalized = seq(reinforce_pp(rewards, group, mask, group_baseline=group_baseline))
    for adv in (plain, normalized):
        assert torch.isfinite(adv).all()
        assert abs(adv.sum().item()) < 1e-3
    # REINFORCE++ rescales REINFORCE: unit (unbiased) std over the batch where there is spread.
    if not group_baseline:
        spread = plain.std().item() if len(ids) > 1 else 0.0
        if spread > 0.1:  # eps = 1e-6 then moves the ratio by at most 1e-5
            torch.testing.assert_close(normalized, plain / spread, rtol=1e-4, atol=1e-4)
            assert normalized.std().item() == pytest.approx(1.0, rel=1e-4)


def test_reinforce_pp_group_baseline_is_lite_ppo_of_group_centred_std():
    # Both centre on the group mean; they differ only in which batch std they divide by:
    # REINFORCE++-baseline the std of the centred rewards, Lite PPO the std of the raw ones.
    group, rewards, mask = torch.tensor(CASE_A_GROUP), t(CASE_A_REWARDS), torch.ones(5, 1)
    centred = rewards - group_mean(rewards, group)
    base = seq(reinforce_pp(rewards, group, mask, group_baseline=True, eps=0.0))
    lite = seq(lite_ppo(rewards, group, mask, eps=0.0))
    torch.testing.assert_close(base * centred.std(), lite * rewards.std())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-10, max_value=10, width=32), min_size=1, max_size=24))
def test_lite_ppo_equals_grpo_for_a_single_group(values):
    # With one group the batch is the group: both divide by the unbiased std of the rewards.
    rewards = t(values)
    group = torch.full((len(values),), 42)
    mask = torch.ones(len(values), 2)
    torch.testing.assert_close(
        lite_ppo(rewards, group, mask), grpo(rewards, group, mask), rtol=1e-4, atol=1e-4
    )


@settings(max_examples=100, deadline=None)
@given(_group_and_rewards, st.integers(min_value=0, max_value=50))
def test_opo_equals_dr_grpo_when_lengths_are_equal(data, length):
    ids, values = data
    group, rewards = torch.tensor(ids), t(values)
    mask = torch.ones(len(ids), 2)
    lengths = torch.full((len(ids),), length)  # 0 too: every completion empty -> plain mean
    torch.testing.assert_close(
        opo(rewards, group, mask, lengths), dr_grpo(rewards, group, mask), rtol=1e-5, atol=1e-4
    )


def test_opo_equals_dr_grpo_when_lengths_are_equal_within_each_group_only():
    # The weights cancel inside a group, so per-group constant lengths are enough.
    group = torch.tensor([4, 8, 4, 8, 4])
    rewards = t([1.0, 2.0, 0.0, -1.0, 0.5])
    lengths = torch.tensor([3, 9, 3, 9, 3])
    mask = torch.ones(5, 1)
    torch.testing.assert_close(opo(rewards, group, mask, lengths), dr_grpo(rewards, group, mask))


def _population_grpo(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(r - mean) / std with the population std (no Bessel correction); 0 where std is 0."""
    n = group_count(group)
    pop_std = group_std(rewards, group) * ((n - 1) / n).sqrt()
    centred = rewards - group_mean(rewards, group)
    return torch.where(pop_std > 0, centred / pop_std.clamp(min=1e-30), 0.0)


# pass@1: R = 1 - C(N-c,1)/C(N,1) = 1 - (N-c)/N = c/N = p, sigma = sqrt(p(1-p)), which for 0/1
# rewards is the population std of the group (mean of r^2 = mean of r = p, so var = p - p^2).
# A_pos = (1-p)/sigma = (1 - mean)/std; A_neg = (1 - p - C(N-c-1,0)/C(N-1,0))/sigma
# = (1 - p - 1)/sigma = (0 - mean)/std. So pass@1 is GRPO with the population std, i.e.
# sqrt(N/(N-1)) times GRPO's unbiased-std advantage (population std = unbiased * sqrt((N-1)/N));
# e.g. r = [1, 0]: pass@1 gives [1, -1], GRPO [0.7071, -0.7071].
@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_passk_with_k1_is_grpo_with_population_std(sizes, rnd):
    group = torch.tensor([g * 3 - 5 for g, size in enumerate(sizes) for _ in range(size)])
    rewards = t([rnd.randint(0, 1) for _ in range(len(group))])
    perm = torch.randperm(len(group), generator=torch.Generator().manual_seed(rnd.randint(0, 99)))
    group, rewards = group[perm], rewards[perm]
    mask = torch.ones(len(group), 1)
    adv = seq(passk(rewards, group, mask, k=1))
    torch.testing.assert_close(adv, _population_grpo(rewards, group), rtol=1e-5, atol=1e-6)
    n = group_count(group)
    unbiased = seq(grpo(rewards, group, mask))  # eps 1e-6: relative 3e-6 at std >= 0.3
    scale = torch.where(n > 1, (n / (n - 1).clamp(min=1)).sqrt(), 0.0)  # singletons: both 0
    torch.testing.assert_close(adv, unbiased * scale, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- properties

NEW = {
    "reinforce": (reinforce, {}),
    "reinforce_pp": (reinforce_pp, {}),
    "reinforce_pp_baseline": (reinforce_pp, {"group_baseline": True}),
    "lite_ppo": (lite_ppo, {}),
    "opo": (opo, {}),
    "passk_k1": (passk, {"k": 1}),
    "passk_k2": (passk, {"k": 2}),
}
# Case B: ids in any order, groups of sizes 3, 3, 2, 1 (binary rewards so passk applies; k=2
# is given only groups of >= 2 rows, so the singleton is left out for it).
CASE_B_GROUP = [7, 3, 5, 3, 7, 9, 5, 3, 7]
CASE_B_REWARDS = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
CASE_B_LENGTHS = [3, 1, 4, 1, 5, 2, 6, 2, 3]


def _case_b(name):
    group, rewards, lengths = (
        torch.tensor(CASE_B_GROUP),
        t(CASE_B_REWARDS),
        torch.tensor(CASE_B_LENGTHS),
    )
    if name == "passk_k2":
        keep = group != 9
        group, rewards, lengths = group[keep], rewards[keep], lengths[keep]
    return group, rewards, lengths


@pytest.mark.parametrize("name", sorted(NEW))
def test_group_ids_are_labels_and_rows_may_come_in_any_order(name):
    fn, params = NEW[name]
    group, rewards, lengths = _case_b(name)
    mask = torch.ones(len(group), 1)
    base = _call(fn, rewards, group, mask, lengths, **params)
    assert base.abs().sum() > 0
    relabelled = torch.tensor([{7: -4, 3: 1000, 5: 0, 9: 2}[int(g)] for g in group])
    torch.testing.assert_close(_call(fn, rewards, relabelled, mask, lengths, **params), base)
    perm = torch.randperm(len(group), generator=torch.Generator().manual_seed(3))
    permuted = _call(fn, rewards[perm], group[perm], mask, lengths[perm], **params)
    torch.testing.assert_close(permuted, base[perm])


@pytest.mark.parametrize("name", sorted(NEW))
def test_mask_zeroes_padding(name):
    fn, params = NEW[name]
    group, rewards, lengths = _case_b(name)
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    adv = _call(fn, rewards, group, mask, lengths, **params)
    seq_adv = _call(fn, rewards, group, torch.ones(len(group), 1), lengths, **params)[:, 0]
    torch.testing.assert_close(adv, seq_adv[:, None] * mask.float())
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline", "lite_ppo", "opo"])
@pytest.mark.parametrize("value", [0.7, 1 / 3, -2.9])
@pytest.mark.parametrize("size", [1, 2, 7, 13])
def test_constant_rewards_give_exactly_zero(name, value, size):
    # The float32 ulp trap of a plain sum / count (see test_algorithms): must be exactly 0.
    fn, params = NEW[name]
    rewards = torch.full((size,), value)
    group = torch.arange(size) % 2
    lengths = torch.arange(size) + 1
    adv = _call(fn, rewards, group, torch.ones(size, 2), lengths, **params)
    assert (adv == 0).all(), adv[:, 0].tolist()
    assert (reinforce(rewards, torch.ones(size, 2)) == 0).all()


@settings(max_examples=100, deadline=None)
@given(
    _group_and_rewards.flatmap(
        lambda d: st.tuples(
            st.just(d),
            st.lists(st.integers(0, 30), min_size=len(d[0]), max_size=len(d[0])),
        )
    )
)
def test_opo_and_lite_ppo_sum_to_zero_weighted_within_each_group(data):
    (ids, values), lens = data
    group, rewards, lengths = torch.tensor(ids), t(values), torch.tensor(lens)
    mask = torch.ones(len(ids), 1)
    o = seq(opo(rewards, group, mask, lengths))
    lp = seq(lite_ppo(rewards, group, mask))
    assert torch.isfinite(o).all() and torch.isfinite(lp).all()
    for g in set(ids):
        rows = group == g
        weights = lengths[rows].float()
        if weights.sum() > 0:  # OPO: length-weighted sum is 0 (the baseline's defining property)
            assert abs((weights * o[rows]).sum().item()) < 1e-2 * max(1.0, weights.sum().item())
        else:  # all completions empty: plain group mean
            assert abs(o[rows].sum().item()) < 1e-4
        assert abs(lp[rows].sum().item()) < 1e-3 * max(1.0, lp[rows].abs().max().item())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=4, max_value=12), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=4),
    st.randoms(use_true_random=False),
)
def test_passk_sums_to_zero_within_each_group_and_rewards_correct_more(sizes, k, rnd):
    group = torch.tensor([g for g, size in enumerate(sizes) for _ in range(size)])
    rewards = t([rnd.randint(0, 1) for _ in range(len(group))])
    adv = seq(passk(rewards, group, torch.ones(len(group), 1), k=k))
    assert torch.isfinite(adv).all()
    for g in range(len(sizes)):
        rows = group == g
        assert abs(adv[rows].sum().item()) < 1e-5
        pos, neg = adv[rows & (rewards == 1)], adv[rows & (rewards == 0)]
        assert (pos >= 0).all() and (neg <= 0).all()


def test_passk_rejects_bad_rewards_and_k():
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = torch.ones(6, 1)
    with pytest.raises(ConfigError, match=r"binary rewards \(0 or 1\), got 0.5"):
        passk(t([1, 0, 0.5, 1, 0, 0]), group, mask, k=2)
    with pytest.raises(ConfigError, match=r"params.k: passk with k=4 .* a group has 3"):
        passk(t([1, 0, 0, 1, 0, 0]), group, mask, k=4)
    with pytest.raises(ConfigError, match="integer k >= 1, got 0"):
        passk(t([1, 0, 0, 1, 0, 0]), group, mask, k=0)


# --------------------------------------------------------------------------- registry, recipes


def test_registered_with_paper_and_params():
    assert dict(ADVANTAGES.get("reinforce_pp").params) == {"group_baseline": False, "eps": 1e-6}
    assert dict(ADVANTAGES.get("lite_ppo").params) == {"eps": 1e-6}
    assert dict(ADVANTAGES.get("passk").params) == {"k": 4}
    assert ADVANTAGES.get("reinforce").inputs == ("rewards", "mask")
    assert ADVANTAGES.get("opo").inputs == ("rewards", "group", "mask", "lengths")
    arxiv = {n: ADVANTAGES.get(n).arxiv for n in ("reinforce_pp", "lite_ppo", "opo", "passk")}
    assert arxiv == {
        "reinforce_pp": "2501.03262",
        "lite_ppo": "2508.08221",
        "opo": "2505.23585",
        "passk": "2508.10751",
    }


def test_opo_reads_lengths_from_the_batch():
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    batch = RolloutBatch(
        prompt_ids=torch.zeros(4, 2, dtype=torch.long),
        prompt_mask=torch.ones(4, 2, dtype=torch.long),
        completion_ids=torch.zeros(4, 3, dtype=torch.long),
        completion_mask=mask,
        group=torch.tensor([0, 0, 1, 1]),
        truncated=torch.zeros(4, dtype=torch.bool),
        rewards=t([1.0, 0.0, 1.0, 0.0]),
    )
    # group 0: lengths [1, 3], b = 1/4, A = [3/4, -1/4]; group 1: lengths [2, 1], b = 2/3,
    # A = [1/3, -2/3].
    adv = ADVANTAGES.call("opo", batch.axis_fields(), {})
    expected = t([0.75, -0.25, 1 / 3, -2 / 3])[:, None] * mask.float()
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("recipe", ["reinforce_pp", "lite_ppo"])
def test_recipes_resolve(recipe):
    assert RECIPES[recipe]["advantage"]["name"] == recipe
    algo = load_config(RunConfig, None, [f"algorithm.recipe={recipe}"]).algorithm
    assert algo.advantage.name == recipe
    assert algo.policy_loss.name == "ppo_clip"
    assert algo.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.2}
    assert algo.kl.name == "k3" and algo.kl.coef == 0.0
    assert algo.aggregation.name == "token_mean"
