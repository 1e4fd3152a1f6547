"""The loss zoo, part 2: sapo, clip_cov, kl_cov, disco.

Hand-computed cases (arithmetic in the comments), gradients against hand-derived ones, and
properties (limits, equivalences, selection rules).
"""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.algorithms.aggregation import seq_mean_token_mean
from rewardlab.algorithms.policy_losses import (
    POLICY_LOSSES,
    clip_cov,
    disco,
    kl_cov,
    pg,
    ppo_clip,
    sapo,
)

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _grad(loss, logp, retain_graph=False):
    (grad,) = torch.autograd.grad(loss, logp, retain_graph=retain_graph)
    return grad


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _random_batch(b=6, width=5, seed=0, spread=0.5):
    """logp (requires grad), old_logp, per-sequence advantages (0 on padding), long mask."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (b,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    old = -torch.rand(b, width, generator=gen, dtype=F64) * 3 - 0.1
    logp = (old + torch.randn(b, width, generator=gen, dtype=F64) * spread).requires_grad_(True)
    adv = torch.randn(b, generator=gen, dtype=F64)[:, None] * mask
    return logp, old, adv, mask


# --------------------------------------------------------------------------- sapo
#
# f(rho) = (4 / tau) sigmoid(tau (rho - 1)); L = -f(rho) A; dL/dlogp = -A rho 4 s (1 - s).
# tau_pos = 1, tau_neg = 2.
#   A = +1, rho = 1:   s = sigmoid(0) = 0.5;   L = -4 * 0.5 = -2;  grad = -1 * 1 * 4 * 0.25 = -1
#   A = +1, rho = 2:   s = sigmoid(1) = 0.7310586;  L = -4 * 0.7310586 = -2.9242344
#                      grad = -1 * 2 * 4 * 0.7310586 * 0.2689414 = -1.5728954
#   A = -1, rho = 0.5: tau = 2, s = sigmoid(2 * -0.5) = sigmoid(-1) = 0.2689414
#                      L = -(4 / 2) * 0.2689414 * -1 = 0.5378828
#                      grad = +1 * 0.5 * 4 * 0.2689414 * 0.7310586 = 0.3932239
#   A = -1, rho = 1:   s = 0.5; L = -(2) * 0.5 * -1 = 1.0;  grad = 1 * 1 * 1 = 1
S1 = _sigmoid(1.0)


def test_sapo_hand_computed():
    ratios = t([[1.0, 2.0, 0.5, 1.0]])
    old = t([[-1.0, -2.0, -1.5, -0.7]])
    logp = (old + ratios.log()).requires_grad_(True)
    adv = t([[1.0, 1.0, -1.0, -1.0]])
    loss, metrics = sapo(logp, old, adv, tau_pos=1.0, tau_neg=2.0)
    s_neg = _sigmoid(-1.0)
    torch.testing.assert_close(loss, t([[-2.0, -4 * S1, 2 * s_neg, 1.0]]))
    expected_grad = t([[-1.0, -8 * S1 * (1 - S1), 2 * s_neg * (1 - s_neg), 1.0]])
    torch.testing.assert_close(_grad(loss.sum(), logp), expected_grad)
    torch.testing.assert_close(loss[0, 1], t(-2.9242344), atol=1e-6, rtol=0)
    torch.testing.assert_close(expected_grad[0, 1:3], t([-1.5728954, 0.3932239]), atol=1e-6, rtol=0)
    torch.testing.assert_close(metrics["ratio"], ratios)
    torch.testing.assert_close(
        metrics["gate_weight"], t([[1.0, 4 * S1 * (1 - S1), 4 * s_neg * (1 - s_neg), 1.0]])
    )


def test_sapo_gradient_closed_form_with_sign_dependent_temperature():
    logp, old, adv, _ = _random_batch(seed=1, spread=0.6)
    loss, _ = sapo(logp, old, adv, tau_pos=1.0, tau_neg=1.05)
    rho = torch.exp(logp - old).detach()
    tau = torch.where(adv > 0, 1.0, 1.05).to(F64)
    s = torch.sigmoid(tau * (rho - 1))
    torch.testing.assert_close(_grad(loss.sum(), logp), -adv * rho * 4 * s * (1 - s))


@pytest.mark.parametrize(("tau_pos", "tau_neg"), [(1.0, 1.05), (0.1, 5.0), (10.0, 10.0)])
def test_sapo_on_policy_gradient_is_reinforce_for_any_temperature(tau_pos, tau_neg):
    # At rho = 1 the gate weight 4 s (1 - s) = 4 * 0.25 = 1: the 4 / tau normalization makes the
    # gradient -A grad logp exactly, while the loss value is -2 A / tau.
    logp, _, adv, _ = _random_batch(seed=2)
    loss, metrics = sapo(logp, logp.detach(), adv, tau_pos=tau_pos, tau_neg=tau_neg)
    torch.testing.assert_close(_grad(loss.sum(), logp), -adv)
    tau = torch.where(adv > 0, tau_pos, tau_neg).to(F64)
    torch.testing.assert_close(loss, -2 * adv / tau)
    torch.testing.assert_close(metrics["gate_weight"], torch.ones_like(adv))


def test_sapo_small_temperature_is_the_unclipped_policy_gradient():
    # f(rho) = (4 / tau) sigmoid(tau (rho - 1)) = 2 / tau + (rho - 1) + O(tau^2): as tau -> 0
    # the gradient tends to pg's -A rho (no trust region at all).
    logp, old, adv, _ = _random_batch(seed=3, spread=0.8)
    loss, _ = sapo(logp, old, adv, tau_pos=1e-4, tau_neg=1e-4)
    pg_loss, _ = pg(logp, old, adv)
    torch.testing.assert_close(_grad(loss.sum(), logp), _grad(pg_loss.sum(), logp))


def test_sapo_large_temperature_behaves_like_a_clip():
    # Like ppo_clip (zero gradient past its band), a large tau leaves (almost) no gradient for
    # ratios far from 1, while at rho = 1 the gradient is still -A. PPO only cuts the side where
    # the ratio moves in the advantage's direction (A > 0: rho > 1.2; A < 0: rho < 0.8); the
    # soft gate damps both sides.
    ratios = t([[1.0, 1.3, 0.7, 2.0, 0.3]])
    old = t([[-1.0] * 5])
    logp = (old + ratios.log()).requires_grad_(True)
    for sign, ppo_cut in ((1.0, [1, 3]), (-1.0, [2, 4])):
        adv = torch.full_like(ratios, sign)
        grad = _grad(sapo(logp, old, adv, tau_pos=50.0, tau_neg=50.0)[0].sum(), logp)
        assert grad[0, 0] == pytest.approx(-sign)
        assert grad[0, 1:].abs().max() < 1e-4
        ppo_grad = _grad(ppo_clip(logp, old, adv)[0].sum(), logp)
        assert ppo_grad[0, 0] == pytest.approx(-sign)
        assert (ppo_grad[0, ppo_cut] == 0).all()


def test_sapo_weight_decays_with_distance_and_faster_for_negative_advantages():
    ratios = t([[1.0, 1.1, 1.5, 2.0, 3.0]])
    old = t([[-2.0] * 5])
    logp = (old + ratios.log()).requires_grad_(True)
    _, pos = sapo(logp, old, torch.ones_like(ratios), tau_pos=1.0, tau_neg=3.0)
    _, neg = sapo(logp, old, -torch.ones_like(ratios), tau_pos=1.0, tau_neg=3.0)
    for weights in (pos["gate_weight"][0], neg["gate_weight"][0]):
        assert (weights[1:] < weights[:-1]).all()
    assert (neg["gate_weight"][0, 1:] < pos["gate_weight"][0, 1:]).all()


def test_sapo_rejects_non_positive_temperature():
    logp, old, adv, _ = _random_batch()
    with pytest.raises(ValueError, match="tau_pos and tau_neg must be > 0"):
        sapo(logp, old, adv, tau_neg=0.0)


# --------------------------------------------------------------------------- clip_cov
#
# One batch for clip_cov and kl_cov. mask [[1, 1, 1], [1, 1, 0]], A = +2 on row 0, -2 on row 1.
#   mean A over the 5 real tokens = (3 * 2 - 2 * 2) / 5 = 0.4  -> A - mean: row 0 1.6, row 1 -2.4
#   logp [[-0.5, -1.0, -3.0], [-0.5, -3.0, 9.0 (padding)]]
#   mean logp = (-0.5 - 1 - 3 - 0.5 - 3) / 5 = -1.6 -> centred [[1.1, 0.6, -1.4], [1.1, -1.4, .]]
#   cov = [[1.76, 0.96, -2.24], [-2.64, 3.36, 0 (padding)]]
# In the band (1, 5): row 0 token 0 (1.76) and row 1 token 1 (3.36).
COV = [[1.76, 0.96, -2.24], [-2.64, 3.36, 0.0]]


def _cov_case():
    logp = t([[-0.5, -1.0, -3.0], [-0.5, -3.0, 9.0]]).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = t([[2.0], [-2.0]]) * mask
    return logp, adv, mask


def test_clip_cov_hand_computed():
    logp, adv, mask = _cov_case()
    # On-policy: PPO clips nothing; ratio 0.4 -> budget max(1, int(0.4 * 5)) = 2 = both
    # candidates. Loss -A elsewhere: row 0 [0, -2, -2], row 1 [2, 0, 0 (padding, A = 0)].
    loss, metrics = clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=0.4)
    torch.testing.assert_close(metrics["cov"], t(COV))
    assert metrics["cov_clipped"].tolist() == [[1, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(loss, t([[0.0, -2.0, -2.0], [2.0, 0.0, 0.0]]))
    grad = _grad((loss * mask).sum(), logp)
    torch.testing.assert_close(grad, t([[0.0, -2.0, -2.0], [2.0, 0.0, 0.0]]))


def test_clip_cov_skips_tokens_the_ppo_clip_already_cuts():
    # Row 1 token 1 gets rho = 0.5 with A = -2: PPO objective min(-1.0, -2 * 0.8) = -1.6 is the
    # clipped one, so that token is no candidate and only row 0 token 0 is detached (the
    # covariance uses logp, unchanged). Its PPO loss is 1.6 with gradient 0.
    logp, adv, mask = _cov_case()
    old = logp.detach() - t([[0.0, 0.0, 0.0], [0.0, math.log(0.5), 0.0]])
    loss, metrics = clip_cov(logp, old, adv, mask, clip_cov_ratio=0.4)
    assert metrics["cov_clipped"].tolist() == [[1, 0, 0], [0, 0, 0]]
    assert metrics["clip_fraction"].tolist() == [[0, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(loss, t([[0.0, -2.0, -2.0], [2.0, 1.6, 0.0]]))
    grad = _grad((loss * mask).sum(), logp)
    torch.testing.assert_close(grad, t([[0.0, -2.0, -2.0], [2.0, 0.0, 0.0]]))


def test_clip_cov_random_draw_is_seeded_and_uniform_over_candidates():
    # Ratio 0.2 -> budget max(1, int(0.2 * 5)) = 1 of the 2 candidates, chosen by `seed`.
    logp, adv, mask = _cov_case()
    picks = set()
    for seed in range(12):
        _, first = clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=0.2, seed=seed)
        _, again = clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=0.2, seed=seed)
        assert torch.equal(first["cov_clipped"], again["cov_clipped"])
        assert first["cov_clipped"].sum() == 1
        (row, col) = first["cov_clipped"].nonzero()[0].tolist()
        picks.add((row, col))
    assert picks == {(0, 0), (1, 1)}
    # Through the registry the seed is a batch field (the learner's per-step seed).
    for seed in range(12):
        fields = {"logp": logp, "old_logp": logp.detach(), "advantages": adv, "mask": mask}
        _, direct = clip_cov(**fields, seed=seed, clip_cov_ratio=0.2)
        _, called = POLICY_LOSSES.call("clip_cov", fields | {"seed": seed}, {"clip_cov_ratio": 0.2})
        assert torch.equal(direct["cov_clipped"], called["cov_clipped"])
    # A tiny ratio still detaches one token (max(1, ...)), as the reference code does.
    _, metrics = clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=1e-4)
    assert metrics["cov_clipped"].sum() == 1


def test_clip_cov_band_bounds_select_candidates():
    logp, adv, mask = _cov_case()
    # (2, 5) keeps only 3.36; (-3, -2) keeps -2.24 and -2.64 (budget 1.0 * 5 = 5, all taken).
    _, metrics = clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=1.0, clip_cov_lb=2.0)
    assert metrics["cov_clipped"].tolist() == [[0, 0, 0], [0, 1, 0]]
    _, metrics = clip_cov(
        logp, logp.detach(), adv, mask, clip_cov_ratio=1.0, clip_cov_lb=-3.0, clip_cov_ub=-2.0
    )
    assert metrics["cov_clipped"].tolist() == [[0, 0, 1], [1, 0, 0]]


def test_clip_cov_with_ratio_zero_is_ppo_clip():
    logp, old, adv, mask = _random_batch(seed=5, spread=0.4)
    loss, metrics = clip_cov(
        logp, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_cov_ratio=0.0, clip_cov_lb=-1e9
    )
    ref, ref_metrics = ppo_clip(logp, old, adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss.sum(), logp), _grad(ref.sum(), logp))
    torch.testing.assert_close(metrics["clip_fraction"], ref_metrics["clip_fraction"])
    assert metrics["cov_clipped"].sum() == 0


def test_clip_cov_detaches_exactly_the_chosen_tokens():
    logp, old, adv, mask = _random_batch(b=8, width=6, seed=6, spread=0.1)
    loss, metrics = clip_cov(
        logp, old, adv, mask, clip_cov_ratio=0.3, clip_cov_lb=0.0, clip_cov_ub=1e9, seed=3
    )
    ref, ref_metrics = ppo_clip(logp, old, adv)
    chosen = metrics["cov_clipped"].bool()
    n_real = int(mask.sum())
    candidates = mask.bool() & (metrics["cov"] > 0) & ~ref_metrics["clip_fraction"].bool()
    assert int(chosen.sum()) == min(max(1, int(0.3 * n_real)), int(candidates.sum())) > 1
    assert (chosen <= candidates).all()  # only candidates, never padding
    grad = _grad((loss * mask).sum(), logp)
    ref_grad = _grad((ref * mask).sum(), logp)
    assert (grad[chosen] == 0).all() and (ref_grad[chosen] != 0).all()
    torch.testing.assert_close(grad[~chosen], ref_grad[~chosen])
    torch.testing.assert_close(loss[~chosen], ref[~chosen])


def test_clip_cov_covariance_ignores_padding():
    # Garbage (even inf) in padding logp / advantages changes neither the means nor the choice.
    logp, adv, mask = _cov_case()
    dirty_logp = logp.detach().clone()
    dirty_logp[1, 2] = float("inf")
    dirty_adv = adv.clone()
    dirty_adv[1, 2] = 1e6
    _, metrics = clip_cov(dirty_logp, dirty_logp, dirty_adv, mask, clip_cov_ratio=0.4)
    torch.testing.assert_close(metrics["cov"], t(COV))
    assert metrics["cov_clipped"].tolist() == [[1, 0, 0], [0, 1, 0]]


def test_clip_cov_rejects_bad_settings():
    logp, adv, mask = _cov_case()
    with pytest.raises(ValueError, match="clip_cov_ratio must be in"):
        clip_cov(logp, logp.detach(), adv, mask, clip_cov_ratio=1.5)
    with pytest.raises(ValueError, match="clip_cov_lb < clip_cov_ub"):
        clip_cov(logp, logp.detach(), adv, mask, clip_cov_lb=5.0, clip_cov_ub=1.0)


# --------------------------------------------------------------------------- kl_cov
#
# The same batch; log ratios x = logp - old_logp: row 0 token 0 = 0.2, row 1 token 1 = -0.3,
# others 0. Ratio 0.4 -> the top max(1, int(0.4 * 5)) = 2 by cov: 3.36 (row 1 token 1) and
# 1.76 (row 0 token 0). Coefficient 1. L = -A e^x (+ |x| on the two):
#   row 0: [-2 e^0.2 + 0.2, -2, -2] = [-2.2428055, -2, -2]
#   row 1: [2, 2 e^-0.3 + 0.3, 0 (padding)] = [2, 1.7816364, 0]
# grad = -A e^x + sign(x) on the two:
#   row 0: [-2 e^0.2 + 1, -2, -2] = [-1.4428055, -2, -2];  row 1: [2, 2 e^-0.3 - 1, 0]
E02, EM03 = math.exp(0.2), math.exp(-0.3)


def test_kl_cov_hand_computed():
    logp, adv, mask = _cov_case()
    old = logp.detach() - t([[0.2, 0.0, 0.0], [0.0, -0.3, 0.0]])
    loss, metrics = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.4, kl_coef=1.0)
    assert metrics["kl_cov_selected"].tolist() == [[1, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(loss, t([[-2 * E02 + 0.2, -2.0, -2.0], [2.0, 2 * EM03 + 0.3, 0.0]]))
    torch.testing.assert_close(loss[0, 0], t(-2.2428055), atol=1e-6, rtol=0)
    grad = _grad((loss * mask).sum(), logp)
    torch.testing.assert_close(grad, t([[-2 * E02 + 1, -2.0, -2.0], [2.0, 2 * EM03 - 1, 0.0]]))
    # Ratio 0.2 -> one token, the largest covariance (row 1 token 1); coefficient 3.
    loss, metrics = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.2, kl_coef=3.0)
    assert metrics["kl_cov_selected"].tolist() == [[0, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(loss[1, 1], t(2 * EM03 + 0.9))
    torch.testing.assert_close(loss[0, 0], t(-2 * E02))


def test_kl_cov_with_ratio_zero_is_pg():
    logp, old, adv, mask = _random_batch(seed=7, spread=0.4)
    loss, metrics = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.0)
    ref, _ = pg(logp, old, adv)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss.sum(), logp), _grad(ref.sum(), logp))
    assert metrics["kl_cov_selected"].sum() == 0


def test_kl_cov_selects_the_top_covariance_real_tokens():
    logp, old, adv, mask = _random_batch(b=8, width=6, seed=8)
    with torch.no_grad():
        logp[mask == 0] = 50.0  # padding garbage: must neither shift the means nor be picked
    loss, metrics = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.25, kl_coef=0.5)
    chosen = metrics["kl_cov_selected"].bool()
    n_real = int(mask.sum())
    assert int(chosen.sum()) == int(0.25 * n_real)
    assert (chosen <= mask.bool()).all()
    real = mask.bool()
    lp = logp.detach()
    cov = (lp - lp[real].mean()) * (adv - adv[real].mean())
    torch.testing.assert_close(metrics["cov"][real], cov[real])
    assert cov[chosen].min() >= cov[real & ~chosen].max()
    x = (logp - old).detach()
    expected = -adv * x.exp() + torch.where(chosen, 0.5 * x.abs(), 0.0)
    torch.testing.assert_close(loss.detach()[real], expected[real])


def test_kl_cov_is_pg_on_policy_whatever_the_ratio():
    # |logp - old_logp| is 0 with gradient 0 at logp = old_logp: on-policy KL-Cov is REINFORCE.
    logp, _, adv, mask = _random_batch(seed=9)
    loss, metrics = kl_cov(logp, logp.detach(), adv, mask, kl_cov_ratio=0.5)
    assert metrics["kl_cov_selected"].sum() > 0
    torch.testing.assert_close(_grad((loss * mask).sum(), logp), -adv)


# --------------------------------------------------------------------------- disco
#
# Two groups of three; mask rows: [1, 1, 0], [1, 1, 1], [1, 0, 0], then full rows.
#   group 0: rewards [1, 0, 0]; logp row 0 [-1, -3, pad], row 1 [-1, -1, -1], row 2 [-4, pad, pad]
#            scores (log_l, mean over real tokens): s0 = -2, s1 = -1, s2 = -4
#   group 1: rewards [1, 1, 1]: no negative -> J_1 = 0 (no gradient)
# On-policy (old = logp): KL = 0, no penalty.
# DisCO-b: J_0 = s0 - (s1 + s2) / 2 = -2 + 2.5 = 0.5; loss -0.5 on every real token of rows 0-2.
#   seq_mean_token_mean, N = 6 rows: 3 * (-0.5) / 6 = -0.25 = -(J_0 + J_1) / 2 (mean over groups)
#   gradient of -(1/2) J_0: row 0 tokens -(1/2)(1/2) = -0.25; row 1 tokens (1/2)(1/2)(1/3) = 1/12;
#   row 2 token 0 (1/2)(1/2) = 0.25; group 1 rows and padding 0.
# DisCO (lse), tau = 1: neg term = log((e^-1 + e^-4) / 2) = log(0.1930975) = -1.6445598
#   J_0 = -2 + 1.6445598 = -0.3554402; softmax weights of the negatives:
#   w1 = e^-1 / (e^-1 + e^-4) = 0.9525741, w2 = 0.0474259
#   gradient: row 0 -0.25; row 1 (1/2) w1 / 3 = 0.1587624; row 2 token 0 (1/2) w2 = 0.0237129
DISCO_MASK = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
NEG_LSE = math.log((math.exp(-1) + math.exp(-4)) / 2)
W1 = math.exp(-1) / (math.exp(-1) + math.exp(-4))


def _disco_case(dtype=F64):
    logp = t(
        [
            [-1.0, -3.0, 5.0],
            [-1.0, -1.0, -1.0],
            [-4.0, 7.0, -9.0],
            [-0.5, -0.2, -0.1],
            [-2.0, -0.3, -0.7],
            [-1.5, -1.1, -0.4],
        ],
        dtype,
    ).requires_grad_(True)
    mask = torch.tensor(DISCO_MASK)
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    return logp, mask, group, rewards


def test_disco_b_hand_computed():
    logp, mask, group, rewards = _disco_case()
    loss, metrics = disco(logp, logp.detach(), mask, group, rewards, lse=False)
    real = mask.bool()
    expected = t([[-0.5] * 3] * 3 + [[0.0] * 3] * 3)
    torch.testing.assert_close(loss[real], expected[real])
    torch.testing.assert_close(metrics["score"][:3, 0], t([-2.0, -1.0, -4.0]))
    assert metrics["valid_group"][:, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert metrics["kl"].abs().max() == 0 and metrics["kl_constraint_active"].sum() == 0
    agg = seq_mean_token_mean(loss, mask, total_seqs=6.0)
    torch.testing.assert_close(agg, t(-0.25))
    grad = _grad(agg, logp)
    expected_grad = t([[-0.25, -0.25, 0.0], [1 / 12] * 3, [0.25, 0.0, 0.0]] + [[0.0] * 3] * 3)
    torch.testing.assert_close(grad, expected_grad)


def test_disco_lse_hand_computed():
    logp, mask, group, rewards = _disco_case()
    loss, _ = disco(logp, logp.detach(), mask, group, rewards, lse=True, tau=1.0)
    j0 = -2.0 - NEG_LSE
    assert j0 == pytest.approx(-0.3554402, abs=1e-7)
    real = mask.bool()
    torch.testing.assert_close(loss[:3][real[:3]], t([-j0] * 6))
    agg = seq_mean_token_mean(loss, mask, total_seqs=6.0)
    torch.testing.assert_close(agg, t(-j0 / 2))
    grad = _grad(agg, logp)
    w2 = 1 - W1
    expected_grad = t([[-0.25, -0.25, 0.0], [W1 / 6] * 3, [w2 / 2, 0.0, 0.0]] + [[0.0] * 3] * 3)
    torch.testing.assert_close(grad, expected_grad)
    assert W1 / 6 == pytest.approx(0.1587624, abs=1e-7)


def test_disco_lse_tends_to_the_mean_version_for_large_tau():
    # tau log mean exp(s / tau) = mean s + var(s) / (2 tau) + ...: tau = 1e6 is within ~1e-6.
    logp, old, _, mask = _random_batch(b=8, width=5, seed=12, spread=0.3)
    group = torch.arange(8) // 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    mean_loss, _ = disco(logp, old, mask, group, rewards, lse=False, beta=0.0)
    lse_loss, _ = disco(logp, old, mask, group, rewards, lse=True, tau=1e6, beta=0.0)
    torch.testing.assert_close(lse_loss, mean_loss, atol=1e-5, rtol=0)
    mean_grad = _grad(seq_mean_token_mean(mean_loss, mask, 8.0), logp)
    lse_grad = _grad(seq_mean_token_mean(lse_loss, mask, 8.0), logp)
    torch.testing.assert_close(lse_grad, mean_grad, atol=1e-6, rtol=0)
    # ... and a small tau weights the highest-scoring negative only (the max).
    sharp, _ = disco(logp, old, mask, group, rewards, lse=True, tau=1e-3, beta=0.0)
    assert not torch.allclose(sharp, mean_loss, atol=1e-3)


def test_disco_group_with_equal_rewards_contributes_nothing():
    logp, mask, group, rewards = _disco_case()
    for lse in (False, True):
        loss, _ = disco(logp, logp.detach(), mask, group, rewards, lse=lse, tau=2.0)
        assert (loss[3:] == 0).all()
        grad = _grad(seq_mean_token_mean(loss, mask, 6.0), logp)
        assert (grad[3:] == 0).all()
    # All rewards equal (0 or 1) everywhere: zero loss and zero gradient (on-policy, no KL).
    for value in (0.0, 1.0):
        loss, metrics = disco(logp, logp.detach(), mask, group, torch.full((6,), value))
        assert (loss == 0).all() and metrics["valid_group"].sum() == 0
        assert (_grad(seq_mean_token_mean(loss, mask, 6.0), logp) == 0).all()


def test_disco_threshold_splits_positives_from_negatives():
    # Scores s = [-1.5, -0.5, -3.0], rewards [0.7, 0.9, 0.3].
    # Threshold 0.5 -> positives rows 0, 1, negative row 2: J = (-1.5 - 0.5) / 2 + 3 = 2.0.
    # Threshold 0.8 -> positive row 1, negatives rows 0, 2: J = -0.5 - (-1.5 - 3.0) / 2 = 1.75.
    # Threshold 0.95 -> no positive -> 0.
    logp = t([[-1.0, -2.0], [-0.5, -0.5], [-3.0, -3.0]]).requires_grad_(True)
    mask = torch.ones(3, 2, dtype=torch.long)
    group = torch.tensor([4, 4, 4])
    rewards = torch.tensor([0.7, 0.9, 0.3])
    for threshold, objective in ((0.5, 2.0), (0.8, 1.75), (0.95, 0.0)):
        loss, _ = disco(logp, logp.detach(), mask, group, rewards, lse=False, threshold=threshold)
        torch.testing.assert_close(loss, torch.full((3, 2), -objective, dtype=F64))


# l_ratio: s = mean_t exp(logp_t - old_logp_t).
#   row 0 (reward 1): log ratios [0, ln 2] -> s = (1 + 2) / 2 = 1.5
#   row 1 (reward 0): log ratio [ln 0.5, padding] -> s = 0.5
#   DisCO-b J = 1.5 - 0.5 = 1.0, loss -1.0 per real token (beta = 0: no penalty)
#   one group, N = 2 rows: seq_mean_token_mean = (2 * -1.0) / 2 = -1.0 = -J
#   gradient of -J: row 0 -rho_t / 2 = [-0.5, -1.0]; row 1 +rho = 0.5
def test_disco_likelihood_ratio_score():
    log_ratio = t([[0.0, math.log(2.0)], [math.log(0.5), 30.0]])
    old = t([[-1.0, -2.0], [-0.5, -60.0]])
    logp = (old + log_ratio).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    group = torch.tensor([0, 0])
    rewards = torch.tensor([1.0, 0.0])
    loss, metrics = disco(logp, old, mask, group, rewards, score="l_ratio", lse=False, beta=0.0)
    torch.testing.assert_close(metrics["score"][:, 0], t([1.5, 0.5]))
    torch.testing.assert_close(loss[mask.bool()], t([-1.0, -1.0, -1.0]))
    agg = seq_mean_token_mean(loss, mask, 2.0)
    torch.testing.assert_close(agg, t(-1.0))
    torch.testing.assert_close(_grad(agg, logp), t([[-0.5, -1.0], [0.5, 0.0]]))


# KL penalty. One group, both rewards 1 (objective 0), every token real.
#   log ratios x = logp - old: row 0 [-0.1, -0.3], row 1 [-0.2, -0.2]
#   k1 = mean(-x) = (0.1 + 0.3 + 0.2 + 0.2) / 4 = 0.2; delta 0.05, beta 10:
#       penalty = 10 * (0.2 - 0.05)^2 = 0.225 on every token; seq_mean_token_mean (N = 2) = 0.225
#       gradient = 2 * 10 * 0.15 * d(k1)/dlogp_t = 3 * (-1/4) = -0.75 per token
#   k3 = mean(e^x - 1 - x) = (0.0048374 + 0.0408182 + 2 * 0.0187308) / 4 = 0.0207793;
#       delta 0.01: penalty = 10 * 0.0107793^2; gradient 2 * 10 * 0.0107793 * (e^x_t - 1) / 4
def _kl_case():
    x = t([[-0.1, -0.3], [-0.2, -0.2]])
    old = t([[-1.0, -0.5], [-2.0, -0.1]])
    logp = (old + x).requires_grad_(True)
    return logp, old, x, torch.ones(2, 2, dtype=torch.long), torch.tensor([0, 0])


def test_disco_kl_penalty_k1_hand_computed():
    logp, old, _, mask, group = _kl_case()
    loss, metrics = disco(
        logp, old, mask, group, torch.ones(2), beta=10.0, delta=0.05, kl_estimator="k1"
    )
    torch.testing.assert_close(loss, torch.full((2, 2), 0.225, dtype=F64))
    torch.testing.assert_close(metrics["kl"], torch.full((2, 2), 0.2, dtype=F64))
    assert metrics["kl_constraint_active"].min() == 1
    agg = seq_mean_token_mean(loss, mask, 2.0)
    torch.testing.assert_close(agg, t(0.225))
    torch.testing.assert_close(_grad(agg, logp), torch.full((2, 2), -0.75, dtype=F64))


def test_disco_kl_penalty_k3_hand_computed():
    logp, old, x, mask, group = _kl_case()
    k3 = [math.exp(v) - 1 - v for v in (-0.1, -0.3, -0.2, -0.2)]
    kl = sum(k3) / 4
    assert kl == pytest.approx(0.0207793, abs=1e-7)
    excess = kl - 0.01
    loss, metrics = disco(logp, old, mask, group, torch.ones(2), beta=10.0, delta=0.01)
    torch.testing.assert_close(loss, torch.full((2, 2), 10 * excess**2, dtype=F64))
    torch.testing.assert_close(metrics["kl"][0, 0], t(kl))
    grad = _grad(seq_mean_token_mean(loss, mask, 2.0), logp)
    torch.testing.assert_close(grad, 2 * 10 * excess * (x.exp() - 1) / 4)
    # Inside the trust region (KL <= delta) there is no penalty and no gradient.
    loss, metrics = disco(logp, old, mask, group, torch.ones(2), beta=10.0, delta=0.05)
    assert (loss == 0).all() and metrics["kl_constraint_active"].sum() == 0
    assert (_grad(seq_mean_token_mean(loss, mask, 2.0), logp) == 0).all()


def test_disco_micro_batches_of_whole_groups_sum_to_the_batch():
    # With no KL penalty (on-policy), splitting into micro-batches of whole groups and
    # aggregating each with the batch's N gives the same value and gradient as one batch.
    logp, _, _, mask = _random_batch(b=9, width=4, seed=13)
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    whole_loss, _ = disco(logp, logp.detach(), mask, group, rewards, tau=2.0)
    whole = seq_mean_token_mean(whole_loss, mask, 9.0)
    whole_grad = _grad(whole, logp)
    parts = torch.zeros((), dtype=F64)
    for rows in (slice(0, 3), slice(3, 9)):
        part_loss, _ = disco(
            logp[rows], logp[rows].detach(), mask[rows], group[rows], rewards[rows], tau=2.0
        )
        parts = parts + seq_mean_token_mean(part_loss, mask[rows], 9.0)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(_grad(parts, logp), whole_grad)


def test_disco_empty_rows_and_padding_garbage_stay_finite():
    # float32, padding log-ratio of 200 (exp overflows to inf) and an empty row: no NaN/inf in
    # the loss or the gradient; the empty row is neither positive nor negative.
    logp, mask, group, rewards = _disco_case(torch.float32)
    old = logp.detach().clone()
    old[0, 2] = -195.0  # padding: logp 5 - (-195) = 200
    mask = mask.clone()
    mask[4] = 0  # an empty completion in group 1
    rewards = rewards.clone()
    rewards[4] = 0.0  # would be group 1's only negative, but it has no tokens
    for score in ("log_l", "l_ratio"):
        loss, metrics = disco(logp, old, mask, group, rewards, score=score, tau=1.0)
        grad = _grad(seq_mean_token_mean(loss, mask, 6.0), logp)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert all(torch.isfinite(v).all() for v in metrics.values())
        assert metrics["valid_group"][:, 0].tolist() == [1, 1, 1, 0, 0, 0]


def test_disco_sharp_lse_does_not_overflow():
    # float32, tau = 0.01: a positive scoring 2.5 above the negatives has s / tau - max = 250,
    # whose exp overflows float32; it must not reach the backward pass (0 * inf = NaN).
    logp = torch.tensor([[-0.5, -0.5], [-3.0, -3.0], [-3.5, -2.5]]).requires_grad_(True)
    mask = torch.ones(3, 2, dtype=torch.long)
    loss, _ = disco(
        logp, logp.detach(), mask, torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]), tau=0.01
    )
    grad = _grad(seq_mean_token_mean(loss, mask, 3.0), logp)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # tau log mean exp(s / tau) over two equal scores -3 is -3: J = -0.5 + 3 = 2.5
    torch.testing.assert_close(loss, torch.full((3, 2), -2.5))


def test_sapo_extreme_ratios_stay_finite():
    # Log-ratios of +-1000 (exp overflows even in float64): the gate is saturated, the loss
    # finite and the gradient 0 rather than NaN.
    old = t([[-1.0, -1.0, -1.0]])
    logp = (old + t([[1000.0, -1000.0, 0.0]])).requires_grad_(True)
    adv = t([[1.0, -1.0, 1.0]])
    loss, _ = sapo(logp, old, adv)
    grad = _grad(loss.sum(), logp)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(grad, t([[0.0, 0.0, -1.0]]))


def test_disco_rejects_unknown_options():
    logp, mask, group, rewards = _disco_case()
    with pytest.raises(ValueError, match="score must be"):
        disco(logp, logp.detach(), mask, group, rewards, score="logL")
    with pytest.raises(ValueError, match="kl_estimator must be"):
        disco(logp, logp.detach(), mask, group, rewards, kl_estimator="k2")
    with pytest.raises(ValueError, match="tau must be > 0"):
        disco(logp, logp.detach(), mask, group, rewards, tau=0.0)


# --------------------------------------------------------------------------- registry


def test_registry_entries_and_parameters():
    expected = {
        "sapo": (("logp", "old_logp", "advantages"), {"tau_pos": 1.0, "tau_neg": 1.05}),
        "clip_cov": (
            ("logp", "old_logp", "advantages", "mask", "seed"),
            {
                "clip_low": 0.2,
                "clip_high": 0.2,
                "clip_cov_ratio": 2e-4,
                "clip_cov_lb": 1.0,
                "clip_cov_ub": 5.0,
            },
        ),
        "kl_cov": (
            ("logp", "old_logp", "advantages", "mask"),
            {"kl_cov_ratio": 2e-4, "kl_coef": 1.0},
        ),
        "disco": (
            ("logp", "old_logp", "mask", "group", "rewards"),
            {
                "score": "log_l",
                "lse": True,
                "tau": 10.0,
                "beta": 1e3,
                "delta": 1e-4,
                "threshold": 0.5,
                "kl_estimator": "k3",
            },
        ),
    }
    arxiv = {"sapo": "2511.20347", "clip_cov": "2505.22617", "kl_cov": "2505.22617"}
    arxiv["disco"] = "2505.12366"
    for name, (inputs, params) in expected.items():
        entry = POLICY_LOSSES.get(name)
        assert entry.inputs == inputs
        assert dict(entry.params) == params
        assert entry.arxiv == arxiv[name] and entry.formula and entry.paper


@pytest.mark.parametrize("name", ["sapo", "clip_cov", "kl_cov", "disco"])
def test_called_through_the_registry_like_the_trainer(name):
    # The learner's fields: bool mask, float32 rewards, whole groups, a per-step int seed. On
    # policy every loss is finite, shaped [B, T], and back-propagates nothing into padding.
    logp, _, adv, mask = _random_batch(b=8, width=5, seed=21)
    fields = {
        "seed": 1234,
        "logp": logp,
        "old_logp": logp.detach(),
        "advantages": adv,
        "mask": mask.bool(),
        "group": torch.arange(8) // 4,
        "rewards": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
    }
    loss, metrics = POLICY_LOSSES.call(name, fields, {})
    assert loss.shape == logp.shape
    assert all(v.shape == logp.shape and torch.isfinite(v).all() for v in metrics.values())
    grad = _grad(seq_mean_token_mean(loss, mask.double(), 8.0), logp)
    assert torch.isfinite(grad).all() and (grad[mask == 0] == 0).all()
    assert grad.abs().sum() > 0
