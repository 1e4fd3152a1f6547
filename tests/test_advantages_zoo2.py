"""BNPO (with its state and the per-component decomposition), ReMax and GAE.

Hand-computed cases carry their arithmetic in the comments; the special cases BNPO reduces to
(Dr. GRPO at alpha = beta = 1, GRPO at alpha = beta = 3/2 for 0/1 rewards) are derived there.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from rewardlab.algorithms.advantages import (
    ADVANTAGES,
    bnpo,
    bnpo_decomposed,
    dr_grpo,
    gae,
    gae_returns,
    grpo,
    remax,
)
from rewardlab.algorithms.groups import group_count, group_mean, group_std
from rewardlab.errors import ConfigError


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def seq(adv: torch.Tensor) -> torch.Tensor:
    return adv[:, 0]


def beta_pdf(p: float, a: float, b: float) -> float:
    """The Beta density by its textbook formula (an independent reference)."""
    log_b = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.exp((a - 1) * math.log(p) + (b - 1) * math.log(1 - p) - log_b)


def state_floats(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in state.items()}


# --------------------------------------------------------------------------- BNPO by hand
#
# Rewards in [0, 2] (reward_max = 2, so x = r / 2), three groups of four, rows interleaved:
#   group 4: r = [2, 0, 0, 0]         -> x = [1, 0, 0, 0],          p = 1/4
#   group 9: r = [0, 2, 0, 0]         -> x = [0, 1, 0, 0],          p = 1/4
#   group 2: r = [1.5, 0.5, 1, 1]     -> x = [.75, .25, .5, .5],    p = 1/2
# Moments over the three groups: m = (1/4 + 1/4 + 1/2) / 3 = 1/3;
#   unbiased v = ((1/12)^2 + (1/12)^2 + (1/6)^2) / 2 = (6/144) / 2 = 1/48.
# m(1-m)/v - 1 = (2/9) * 48 - 1 = 32/3 - 1 = 29/3;
#   a = 29/3 * 1/3 = 29/9, b = 29/3 * 2/3 = 58/9;
#   alpha = 1 + a/3 = 56/27 = 2.074074, beta = 1 + b/3 = 85/27 = 3.148148.
# B(alpha, beta) = 0.0705837; BetaPDF(1/4) = 1.722866 -> 1/pdf = 0.580428;
#                             BetaPDF(1/2) = 1.518133 -> 1/pdf = 0.658704.
# Advantages: p = 1/4: (1 - 1/4) * 0.580428 = 0.435321, (0 - 1/4) * 0.580428 = -0.145107;
#             p = 1/2: +-0.25 * 0.658704 = +-0.164676, and 0 for x = 0.5.
HAND_GROUP = [4, 9, 2, 4, 9, 2, 4, 9, 2, 4, 9, 2]
HAND_REWARDS = [2, 0, 1.5, 0, 2, 0.5, 0, 0, 1, 0, 0, 1]
HAND_ALPHA, HAND_BETA = 56 / 27, 85 / 27
W_QUARTER, W_HALF = 0.580428271359, 0.658703780469
HAND_EXPECTED = [
    0.75 * W_QUARTER, -0.25 * W_QUARTER, 0.25 * W_HALF,
    -0.25 * W_QUARTER, 0.75 * W_QUARTER, -0.25 * W_HALF,
    -0.25 * W_QUARTER, -0.25 * W_QUARTER, 0.0,
    -0.25 * W_QUARTER, -0.25 * W_QUARTER, 0.0,
]  # fmt: skip


def test_bnpo_hand_computed_with_reward_bounds():
    assert 1 / beta_pdf(0.25, HAND_ALPHA, HAND_BETA) == pytest.approx(W_QUARTER, rel=1e-9)
    assert 1 / beta_pdf(0.5, HAND_ALPHA, HAND_BETA) == pytest.approx(W_HALF, rel=1e-9)
    mask = torch.ones(12, 3)
    mask[1, 2:] = 0
    adv, state = bnpo(t(HAND_REWARDS), torch.tensor(HAND_GROUP), mask, {}, reward_max=2.0)
    assert adv.shape == (12, 3) and adv.dtype == torch.float32
    torch.testing.assert_close(seq(adv), t(HAND_EXPECTED), rtol=1e-6, atol=1e-7)
    assert (adv[1, 2:] == 0).all() and adv[1, 1] == adv[1, 0]
    assert set(state) == {"alpha", "beta", "mean", "var", "steps"}
    for value in state.values():
        assert value.dtype == torch.float64 and value.shape == ()
    assert state_floats(state) == pytest.approx(
        {"alpha": HAND_ALPHA, "beta": HAND_BETA, "mean": 1 / 3, "var": 1 / 48, "steps": 1.0}
    )


def test_bnpo_advantages_sum_to_zero_within_each_group_and_ignore_labels_and_order():
    # 1/pdf is one number per group, so each group's advantages sum to sum(x - p) * w = 0.
    group, rewards, mask = torch.tensor(HAND_GROUP), t(HAND_REWARDS), torch.ones(12, 1)
    base, _ = bnpo(rewards, group, mask, {}, reward_max=2.0)
    for g in set(HAND_GROUP):
        assert abs(base[group == g].sum().item()) < 1e-6
    relabelled = torch.tensor([{4: -1, 9: 70, 2: 5}[g] for g in HAND_GROUP])
    torch.testing.assert_close(bnpo(rewards, relabelled, mask, {}, reward_max=2.0)[0], base)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    permuted, _ = bnpo(rewards[perm], group[perm], mask, {}, reward_max=2.0)
    torch.testing.assert_close(permuted, base[perm])


# --------------------------------------------------------------------------- BNPO special cases
#
# alpha = beta = 1: Beta(1, 1) is uniform, BetaPDF = 1 on [0, 1], so A = x - p(q): REINFORCE
# with the prompt's mean reward as baseline, which is exactly Dr. GRPO's r - mean(r_group).
# The fit gives alpha = beta = 1 whenever a <= 0 and b <= 0, i.e. v >= m(1-m), and by our
# fallback for fewer than two groups or v = 0.
DR_GRPO_CASES = {
    # one group: no moments across prompts (the authors' code also falls back to Beta(1, 1))
    "one_group": ([5, 5, 5, 5], [1.0, 0.0, 0.25, 0.5]),
    # two groups with equal p = 1/2: v = 0, the moment fit is a point mass -> uniform
    "zero_var": ([0, 0, 1, 1, 0, 1], [1.0, 0.0, 0.75, 0.25, 0.5, 0.5]),
    # p = 0.1 and 0.9 (groups of ten): m = 1/2, m(1-m) = 1/4, unbiased v = 2 * 0.4^2 = 0.32,
    # m(1-m)/v - 1 = -0.21875 < 0 -> a, b < 0 -> alpha = beta = 1
    "wide_spread": ([0] * 10 + [1] * 10, [1.0] + [0.0] * 9 + [0.0] + [1.0] * 9),
}


@pytest.mark.parametrize("case", sorted(DR_GRPO_CASES))
def test_bnpo_with_uniform_normalizer_is_dr_grpo(case):
    ids, values = DR_GRPO_CASES[case]
    group, rewards = torch.tensor(ids), t(values)
    mask = torch.ones(len(ids), 2)
    adv, state = bnpo(rewards, group, mask, {})
    assert float(state["alpha"]) == 1.0 and float(state["beta"]) == 1.0
    torch.testing.assert_close(adv, dr_grpo(rewards, group, mask), rtol=1e-6, atol=1e-7)


def test_bnpo_reward_bounds_rescale_the_advantage():
    # Rewards in [-1, 1]: x = (r + 1) / 2, and with one group (alpha = beta = 1) the advantage
    # is x - mean(x) = (r - mean(r)) / 2, half Dr. GRPO's.
    group, rewards, mask = (
        torch.zeros(4, dtype=torch.long),
        t([1.0, -1.0, 0.5, -0.5]),
        torch.ones(4, 1),
    )
    adv, _ = bnpo(rewards, group, mask, {}, reward_min=-1.0, reward_max=1.0)
    torch.testing.assert_close(adv, dr_grpo(rewards, group, mask) / 2)


# alpha = beta = 3/2: BetaPDF(p) = p^(1/2) (1-p)^(1/2) / B(3/2, 3/2) with
# B(3/2, 3/2) = Gamma(3/2)^2 / Gamma(3) = (sqrt(pi)/2)^2 / 2 = pi/8, so
# 1/pdf = (pi/8) / sqrt(p(1-p)). For 0/1 rewards the population std of a group is
# sqrt(p(1-p)) (mean of r^2 = mean of r = p), hence
#   A_BNPO = (pi/8) * (r - p) / std_pop = (pi/8) * GRPO with the population std
#          = (pi/8) * sqrt(N/(N-1)) * GRPO (``grpo`` uses the unbiased std, std_pop =
#            std_unbiased * sqrt((N-1)/N)).
# The fit gives alpha = beta = 3/2 when a = b = 3/2: m = 1/2 and (m(1-m)/v - 1)/2 = 3/2, i.e.
# v = 1/16. Groups of N = 4 with 1, 2 and 3 correct: p = 1/4, 1/2, 3/4, m = 1/2,
# unbiased v = (1/16 + 0 + 1/16) / 2 = 1/16. Check: p = 1/4 has std_pop = sqrt(3)/4 and
# 1/pdf = (pi/8) * 4/sqrt(3) = pi/(2 sqrt 3) = 0.906900; a correct answer gets
# 0.75 * 0.906900 = 0.680175 = (pi/8) * 0.75 / (sqrt(3)/4).
def test_bnpo_with_alpha_beta_three_halves_is_grpo_for_binary_rewards():
    correct = {0: 1, 1: 2, 2: 3}  # group -> number of correct answers out of 4
    group = torch.tensor([g for g in range(3) for _ in range(4)])
    rewards = t([1.0 if i < correct[g] else 0.0 for g in range(3) for i in range(4)])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    group, rewards = group[perm], rewards[perm]
    mask = torch.ones(12, 1)
    adv, state = bnpo(rewards, group, mask, {})
    assert float(state["alpha"]) == pytest.approx(1.5, abs=1e-12)
    assert float(state["beta"]) == pytest.approx(1.5, abs=1e-12)

    n = group_count(group)
    pop_std = group_std(rewards, group) * ((n - 1) / n).sqrt()
    grpo_pop = (rewards - group_mean(rewards, group)) / pop_std
    torch.testing.assert_close(seq(adv), math.pi / 8 * grpo_pop, rtol=1e-6, atol=1e-7)
    scale = math.pi / 8 * math.sqrt(4 / 3)
    torch.testing.assert_close(seq(adv), scale * seq(grpo(rewards, group, mask, eps=0.0)))
    first_correct = seq(adv)[(group == 0) & (rewards == 1)]
    torch.testing.assert_close(first_correct, t([0.75 * math.pi / (2 * math.sqrt(3))]))


# --------------------------------------------------------------------------- BNPO edge cases


def test_bnpo_all_wrong_or_all_right_groups_get_exactly_zero_even_at_the_clamp():
    # p = 0, 1/4, 1/2 (groups of four): m = 1/4, v = (1/16 + 0 + 1/16) / 2 = 1/16,
    # m(1-m)/v - 1 = 3 - 1 = 2, a = 1/2, b = 3/2: alpha = 7/6 > 1, so BetaPDF(0) = 0 and
    # 1/pdf = inf -> clamped to 1e6; the p = 0 group has x - p = 0, so A = 0, not NaN.
    rewards = t([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0])
    group = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    adv, state = bnpo(rewards, group, torch.ones(12, 1), {})
    assert float(state["alpha"]) == pytest.approx(7 / 6)
    assert float(state["beta"]) == pytest.approx(1.5)
    assert torch.isfinite(adv).all()
    assert (adv[:4] == 0).all()
    # Mirror image: all correct (p = 1) with beta > 1.
    adv, state = bnpo(1 - rewards, group, torch.ones(12, 1), {})
    assert float(state["beta"]) == pytest.approx(7 / 6) and (adv[:4] == 0).all()
    assert torch.isfinite(adv).all()


def test_bnpo_singleton_group_gets_zero_and_constant_batch_gives_zero():
    rewards = t([1.0, 1.0, 0.0, 0.0, 1.0])
    group = torch.tensor([0, 0, 0, 1, 2])  # groups 1 and 2 have one row each
    adv, _ = bnpo(rewards, group, torch.ones(5, 1), {})
    assert (adv[3:] == 0).all() and adv[:3].abs().sum() > 0
    adv, state = bnpo(torch.full((6,), 0.7), torch.tensor([0, 0, 1, 1, 2, 2]), torch.ones(6, 1), {})
    assert (adv == 0).all() and float(state["alpha"]) == 1.0


def test_bnpo_rejects_rewards_outside_the_bounds_and_bad_params():
    group, mask = torch.tensor([0, 0]), torch.ones(2, 1)
    with pytest.raises(ConfigError, match=r"reward 1.5 lies outside \[reward_min, reward_max\]"):
        bnpo(t([1.5, 0.0]), group, mask, {})
    with pytest.raises(ConfigError, match="outside"):
        bnpo(t([float("nan"), 0.0]), group, mask, {})
    with pytest.raises(ConfigError, match="0 <= momentum < 1"):
        bnpo(t([1.0, 0.0]), group, mask, {}, momentum=1.0)
    with pytest.raises(ConfigError, match="reward_max > reward_min"):
        bnpo(t([1.0, 0.0]), group, mask, {}, reward_min=1.0, reward_max=1.0)


# --------------------------------------------------------------------------- BNPO state
#
# Step 1 = the hand batch: m1 = 1/3, v1 = 1/48. Step 2 = the three-halves batch: m2 = 1/2,
# v2 = 1/16. With momentum 0.5: m = (1/3 + 1/2)/2 = 5/12, v = (1/48 + 3/48)/2 = 1/24;
# m(1-m)/v - 1 = (35/144) * 24 - 1 = 35/6 - 1 = 29/6; a = 29/6 * 5/12 = 145/72,
# b = 29/6 * 7/12 = 203/72; alpha = 1 + 145/216 = 361/216, beta = 1 + 203/216 = 419/216.
def _three_halves_batch():
    group = torch.tensor([g for g in range(3) for _ in range(4)])
    rewards = t([1.0 if i <= g else 0.0 for g in range(3) for i in range(4)])
    return rewards, group


def test_bnpo_state_round_trip_with_momentum():
    mask = torch.ones(12, 1)
    _, state1 = bnpo(
        t(HAND_REWARDS), torch.tensor(HAND_GROUP), mask, {}, momentum=0.5, reward_max=2.0
    )
    # The state survives a checkpoint as it is (float64 scalar tensors).
    buffer = io.BytesIO()
    torch.save(state1, buffer)
    buffer.seek(0)
    restored = torch.load(buffer)
    rewards, group = _three_halves_batch()
    adv, state2 = bnpo(rewards, group, mask, restored, momentum=0.5)
    alpha, beta = 361 / 216, 419 / 216
    assert state_floats(state2) == pytest.approx(
        {"alpha": alpha, "beta": beta, "mean": 5 / 12, "var": 1 / 24, "steps": 2.0}
    )
    p = group_mean(rewards.double(), group)
    expected = [(r - q) / beta_pdf(q, alpha, beta) for r, q in zip(rewards.tolist(), p.tolist())]
    torch.testing.assert_close(seq(adv), t(expected), rtol=1e-6, atol=1e-7)
    # Without the previous state (first step) or with momentum 0 only this batch counts:
    # alpha = beta = 3/2 as in the GRPO special case.
    for previous, momentum in (({}, 0.5), (restored, 0.0)):
        fresh, fresh_state = bnpo(rewards, group, mask, previous, momentum=momentum)
        assert float(fresh_state["alpha"]) == pytest.approx(1.5)
        assert not torch.allclose(fresh, adv)


def test_bnpo_momentum_keeps_moments_when_a_batch_has_one_group():
    mask = torch.ones(12, 1)
    _, state1 = bnpo(
        t(HAND_REWARDS), torch.tensor(HAND_GROUP), mask, {}, momentum=0.9, reward_max=2.0
    )
    rewards = t([1.0, 0.0, 0.0, 0.0])
    adv, state2 = bnpo(
        rewards, torch.zeros(4, dtype=torch.long), torch.ones(4, 1), state1, momentum=0.9
    )
    assert state_floats(state2) == pytest.approx(state_floats(state1))
    # The kept fit (alpha = 56/27, beta = 85/27) normalizes this p = 1/4 group: 1/pdf = 0.580428.
    torch.testing.assert_close(seq(adv), t([0.75, -0.25, -0.25, -0.25]) * W_QUARTER)


# --------------------------------------------------------------------------- BNPO decomposition


def test_bnpo_decomposed_averages_per_component_bnpo_with_own_state():
    rewards, group = _three_halves_batch()
    fmt = t([1.0, float("nan"), 1.0, 0.0, 1.0, 1.0, float("nan"), 0.0, 1.0, 1.0, 0.0, 1.0])
    scores = {"format": fmt, "accuracy": rewards}
    mask = torch.ones(12, 2)
    adv, state = bnpo_decomposed(scores, group, mask, {})
    acc_adv, acc_state = bnpo(rewards, group, mask, {})
    fmt_adv, fmt_state = bnpo(torch.nan_to_num(fmt, nan=0.0), group, mask, {})  # NaN -> 0
    torch.testing.assert_close(adv, (acc_adv + fmt_adv) / 2)
    assert list(state) == [f"accuracy/{k}" for k in acc_state] + [f"format/{k}" for k in fmt_state]
    assert float(state["accuracy/alpha"]) == pytest.approx(1.5)
    assert float(state["format/alpha"]) == float(fmt_state["alpha"])
    # Second step with momentum: each component continues from its own state.
    adv2, state2 = bnpo_decomposed(scores, group, mask, state, momentum=0.5)
    acc2, _ = bnpo(rewards, group, mask, acc_state, momentum=0.5)
    fmt2, _ = bnpo(torch.nan_to_num(fmt, nan=0.0), group, mask, fmt_state, momentum=0.5)
    torch.testing.assert_close(adv2, (acc2 + fmt2) / 2)
    assert float(state2["accuracy/steps"]) == 2.0


def test_bnpo_decomposed_with_one_component_is_bnpo():
    rewards, group = _three_halves_batch()
    mask = torch.ones(12, 1)
    adv, state = bnpo_decomposed({"accuracy": rewards}, group, mask, {})
    ref, ref_state = bnpo(rewards, group, mask, {})
    torch.testing.assert_close(adv, ref)
    assert state_floats(state) == {f"accuracy/{k}": v for k, v in state_floats(ref_state).items()}
    with pytest.raises(ConfigError, match="at least one reward component"):
        bnpo_decomposed({}, group, mask, {})


# --------------------------------------------------------------------------- ReMax


# rewards [1, 0, 0.5, 2], greedy baselines [0.5, 0.5, 1, 2]: A = [0.5, -0.5, -0.5, 0].
def test_remax_hand_computed():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    adv = remax(t([1.0, 0.0, 0.5, 2.0]), t([0.5, 0.5, 1.0, 2.0]), mask)
    torch.testing.assert_close(adv, t([0.5, -0.5, -0.5, 0.0])[:, None] * mask.float())
    assert (adv[mask == 0] == 0).all()


# --------------------------------------------------------------------------- GAE
#
# One row, T = 4, mask [1, 1, 1, 0]; gamma = 0.9, lam = 0.8 (gamma * lam = 0.72).
# token_rewards = [-0.1, 0, 0.9, 5] (5 is on padding and must be ignored),
# values = [0.5, 0.4, 0.6, 9] (9 on padding: V after the last real token counts as 0).
#   delta_2 = 0.9 + 0.9 * 0 - 0.6 = 0.3
#   delta_1 = 0 + 0.9 * 0.6 - 0.4 = 0.14
#   delta_0 = -0.1 + 0.9 * 0.4 - 0.5 = -0.24
#   A_2 = 0.3; A_1 = 0.14 + 0.72 * 0.3 = 0.356; A_0 = -0.24 + 0.72 * 0.356 = 0.01632
#   returns = A + V = [0.51632, 0.756, 0.9, 0]
def test_gae_hand_computed_one_row():
    r = t([[-0.1, 0.0, 0.9, 5.0]])
    v = t([[0.5, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv = gae(r, v, mask, gamma=0.9, lam=0.8, whiten=False)
    torch.testing.assert_close(adv, t([[0.01632, 0.356, 0.3, 0.0]]))
    ret = gae_returns(r, v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(ret, t([[0.51632, 0.756, 0.9, 0.0]]))


def _random_rollout(seed: int, b: int = 5, width: int = 7):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([width, 1, 4, 0, 6])[:b]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    r = torch.randn(b, width, generator=gen)
    v = torch.randn(b, width, generator=gen)
    return r, v, mask, lengths


def test_gae_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    r, v, mask, lengths = _random_rollout(0)
    m = mask.float()
    for gamma in (1.0, 0.9):
        # lam = 1: returns are the discounted rewards-to-go G_t, advantages G_t - V_t.
        expected = torch.zeros_like(r)
        for i, n in enumerate(lengths.tolist()):
            for s in range(n):
                expected[i, s] = sum(gamma ** (k - s) * r[i, k] for k in range(s, n))
        ret = gae_returns(r, v, mask, gamma=gamma, lam=1.0)
        torch.testing.assert_close(ret, expected, rtol=1e-5, atol=1e-5)
        adv = gae(r, v, mask, gamma=gamma, lam=1.0, whiten=False)
        torch.testing.assert_close(adv, (expected - v) * m, rtol=1e-5, atol=1e-5)
        # lam = 0: one-step TD errors r_t + gamma V_{t+1} - V_t, V = 0 past the end.
        next_v = torch.cat([v[:, 1:] * m[:, 1:], torch.zeros(len(r), 1)], dim=1)
        td = (r + gamma * next_v - v) * m
        torch.testing.assert_close(gae(r, v, mask, gamma=gamma, lam=0.0, whiten=False), td)


def test_gae_equals_its_defining_sum():
    r, v, mask, lengths = _random_rollout(1)
    gamma, lam = 0.95, 0.7
    expected = torch.zeros_like(r)
    for i, n in enumerate(lengths.tolist()):
        vals = v[i, :n].tolist() + [0.0]
        delta = [r[i, s].item() + gamma * vals[s + 1] - vals[s] for s in range(n)]
        for s in range(n):
            expected[i, s] = sum((gamma * lam) ** (k - s) * delta[k] for k in range(s, n))
    torch.testing.assert_close(gae(r, v, mask, gamma=gamma, lam=lam, whiten=False), expected)
    returns = gae_returns(r, v, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(returns, expected + v * mask)


def test_gae_whitening_over_real_tokens_and_padding_is_zero():
    r, v, mask, _ = _random_rollout(2)
    raw = gae(r, v, mask, whiten=False)
    white = gae(r, v, mask)
    real = mask.bool()
    assert (white[~real] == 0).all() and (raw[~real] == 0).all()
    assert (gae_returns(r, v, mask)[~real] == 0).all()
    # TRL / verl masked_whiten: mean and Bessel-corrected variance over the real tokens.
    expected = (raw[real] - raw[real].mean()) / torch.sqrt(raw[real].var() + 1e-8)
    torch.testing.assert_close(white[real], expected)
    assert abs(white[real].mean().item()) < 1e-5
    assert white[real].std().item() == pytest.approx(1.0, abs=1e-4)
    # No real token at all: nothing to normalize, all zeros.
    assert (gae(r, v, torch.zeros_like(mask)) == 0).all()


# --------------------------------------------------------------------------- registry


def test_registered_inputs_params_and_papers():
    assert ADVANTAGES.get("bnpo").inputs == ("rewards", "group", "mask", "state")
    assert dict(ADVANTAGES.get("bnpo").params) == {
        "momentum": 0.0,
        "reward_min": 0.0,
        "reward_max": 1.0,
    }
    assert ADVANTAGES.get("bnpo_decomposed").inputs == ("scores", "group", "mask", "state")
    assert ADVANTAGES.get("remax").inputs == ("rewards", "baseline_rewards", "mask")
    assert ADVANTAGES.get("gae").inputs == ("token_rewards", "values", "mask")
    assert dict(ADVANTAGES.get("gae").params) == {"gamma": 1.0, "lam": 0.95, "whiten": True}
    assert ADVANTAGES.get("bnpo").arxiv == "2506.02864"
    assert ADVANTAGES.get("remax").arxiv == "2310.10505"
    assert ADVANTAGES.get("gae").arxiv.split("; ")[0] == "1506.02438"
    rewards, group = _three_halves_batch()
    fields = {"rewards": rewards, "group": group, "mask": torch.ones(12, 1), "state": {}}
    adv, state = ADVANTAGES.call("bnpo", fields, {"momentum": 0.5})
    assert adv.shape == (12, 1) and float(state["steps"]) == 1.0
