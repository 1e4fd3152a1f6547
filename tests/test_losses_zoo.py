"""The loss zoo: pg, ppo_dual_clip, gspo, gmpo, cispo; KL k2 / abs; seq_mean_token_sum.

Hand-computed cases (arithmetic in the comments), closed forms and properties.
"""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.algorithms import RECIPES
from rewardlab.algorithms.aggregation import (
    AGGREGATIONS,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rewardlab.algorithms.kl import KL_ESTIMATORS, abs_kl, k1, k2
from rewardlab.algorithms.policy_losses import (
    POLICY_LOSSES,
    cispo,
    gmpo,
    gspo,
    pg,
    ppo_clip,
    ppo_dual_clip,
)

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _inputs(ratios, advantages, seed=0):
    """logp (requires grad) and old_logp with exp(logp - old_logp) == ratios, [B, T] float64."""
    gen = torch.Generator().manual_seed(seed)
    ratios = t(ratios)
    old = -torch.rand(ratios.shape, generator=gen, dtype=F64) * 3 - 0.1
    logp = (old + ratios.log()).detach().requires_grad_(True)
    return logp, old, t(advantages).expand_as(ratios).clone()


def _grad(loss, logp, retain_graph=False):
    (grad,) = torch.autograd.grad(loss, logp, retain_graph=retain_graph)
    return grad


def _random_batch(b=6, width=5, seed=0, spread=0.5):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (b,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    old = -torch.rand(b, width, generator=gen, dtype=F64) * 3 - 0.1
    logp = (old + torch.randn(b, width, generator=gen, dtype=F64) * spread).requires_grad_(True)
    seq_adv = torch.randn(b, generator=gen, dtype=F64)
    adv = seq_adv[:, None] * mask  # the trainer's advantages: one per sequence, 0 on padding
    return logp, old, adv, mask


# --------------------------------------------------------------------------- pg
#
# L = -A * rho, dL/dlogp = -A * rho.
#   A = +2: rho 0.5 -> -1.0 (grad -1.0);  rho 2.0 -> -4.0 (grad -4.0)
#   A = -1: rho 0.5 ->  0.5 (grad  0.5);  rho 2.0 ->  2.0 (grad  2.0)


def test_pg_hand_computed():
    logp, old, adv = _inputs([[0.5, 2.0], [0.5, 2.0]], [[2.0], [-1.0]])
    loss, metrics = pg(logp, old, adv)
    expected = t([[-1.0, -4.0], [0.5, 2.0]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(_grad(loss.sum(), logp), expected)  # -A * rho, the same numbers
    torch.testing.assert_close(metrics["ratio"], t([[0.5, 2.0], [0.5, 2.0]]))


def test_ppo_clip_equals_pg_at_ratio_one():
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 7, generator=gen, dtype=F64).requires_grad_(True)
    adv = torch.randn(4, 7, generator=gen, dtype=F64)
    old = logp.detach().clone()  # rho = 1
    ppo_loss, _ = ppo_clip(logp, old, adv, clip_low=0.2, clip_high=0.28)
    pg_loss, _ = pg(logp, old, adv)
    torch.testing.assert_close(ppo_loss, pg_loss)
    torch.testing.assert_close(pg_loss, -adv)
    g_ppo = _grad(ppo_loss.sum(), logp)
    g_pg = _grad(pg_loss.sum(), logp)
    torch.testing.assert_close(g_ppo, g_pg)
    torch.testing.assert_close(g_pg, -adv)  # REINFORCE: -A * grad logp


@pytest.mark.parametrize("name", ["pg", "ppo_clip", "ppo_dual_clip", "gspo", "gmpo", "cispo"])
def test_every_policy_loss_is_reinforce_on_policy(name):
    # rho = 1 everywhere: every loss's gradient of sum_t m_t l_t is -A_t on real tokens. For the
    # sequence-level ones (gspo, gmpo) each of the |o_i| tokens carries the sequence loss whose
    # gradient w.r.t. each token is -A * s / |o_i| with s = 1, and the |o_i| copies sum to -A.
    logp, _, adv, mask = _random_batch(seed=11)
    fields = {"logp": logp, "old_logp": logp.detach(), "advantages": adv, "mask": mask}
    loss, _ = POLICY_LOSSES.call(name, fields, {})
    grad = _grad((loss * mask).sum(), logp)
    torch.testing.assert_close(grad, -adv)


# --------------------------------------------------------------------------- dual clip
#
# clip 0.2 / 0.2 (ratio range [0.8, 1.2]), c = 3.
#   A = -2: PPO loss = max(2 rho, 2 clip(rho)); dual bound -c A = 6.
#     rho 0.5 -> max(1.0, 1.6) = 1.6;  1.0 -> 2.0;  1.5 -> max(3.0, 2.4) = 3.0;
#     rho 2.5 -> max(5.0, 2.4) = 5.0 (< 6, kept);  rho 4.0 -> max(8.0, 2.4) = 8.0 -> min(8, 6) = 6.0
#   A = +2: PPO loss = -min(2 rho, 2 clip(rho)), unchanged by the dual clip:
#     rho 0.5 -> -1.0;  1.0 -> -2.0;  1.5 -> -2.4;  2.5 -> -2.4;  4.0 -> -2.4
#   Gradients for A = -2: -A rho where unclipped: [0 (clipped low), 2, 3, 5, 0 (dual clip)].
DUAL_RATIOS = [0.5, 1.0, 1.5, 2.5, 4.0]


def test_ppo_dual_clip_hand_computed():
    logp, old, adv = _inputs([DUAL_RATIOS, DUAL_RATIOS], [[-2.0], [2.0]])
    loss, metrics = ppo_dual_clip(logp, old, adv, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    torch.testing.assert_close(
        loss, t([[1.6, 2.0, 3.0, 5.0, 6.0], [-1.0, -2.0, -2.4, -2.4, -2.4]])
    )
    assert metrics["dual_clip_fraction"].tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    grad = _grad(loss.sum(), logp)
    torch.testing.assert_close(grad[0], t([0.0, 2.0, 3.0, 5.0, 0.0]))
    torch.testing.assert_close(grad[1], t([-1.0, -2.0, 0.0, 0.0, 0.0]))


def test_dual_clip_bounds_negative_advantages_and_leaves_positive_ones():
    gen = torch.Generator().manual_seed(5)
    shape = (8, 50)
    old = -torch.rand(shape, generator=gen, dtype=F64) * 3
    logp = old + torch.randn(shape, generator=gen, dtype=F64) * 1.5  # ratios e^-4.5 .. e^4.5
    adv = torch.randn(shape, generator=gen, dtype=F64) * 2
    for c in (1.5, 3.0, 10.0):
        dual, _ = ppo_dual_clip(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=c)
        plain, _ = ppo_clip(logp, old, adv, clip_low=0.2, clip_high=0.28)
        neg = adv < 0
        assert (dual[neg] <= -c * adv[neg] + 1e-12).all()
        torch.testing.assert_close(dual[neg], torch.minimum(plain[neg], -c * adv[neg]))
        torch.testing.assert_close(dual[~neg], plain[~neg])
        assert (dual[neg] < plain[neg]).any()  # the bound does bite somewhere in this batch


def test_dual_clip_rejects_c_not_above_one():
    logp, old, adv = _inputs([[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_dual_clip(logp, old, adv, dual_clip=1.0)


def test_ppo_clip_keeps_its_schema():
    # Dual clip is its own entry, so ppo_clip's parameters (and numbers) are unchanged.
    assert dict(POLICY_LOSSES.get("ppo_clip").params) == {"clip_low": 0.2, "clip_high": 0.2}
    assert dict(POLICY_LOSSES.get("ppo_dual_clip").params) == {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "dual_clip": 3.0,
    }


# --------------------------------------------------------------------------- gspo
#
# clip 0.2 / 0.2 for readable numbers (range [0.8, 1.2]).
#   row 0: mask [1, 1, 0], log ratios [0.2, -0.1, 5.0 (padding, ignored)], A = +1
#          s = exp((0.2 - 0.1) / 2) = exp(0.05) = 1.0512711; inside [0.8, 1.2]
#          loss on real tokens = -1 * 1.0512711; padding has A = 0 -> 0.
#   row 1: mask [1, 1, 1], log ratios [0.9, 0.0, 0.0], A = +2
#          s = exp(0.9 / 3) = exp(0.3) = 1.3498588 > 1.2 -> clipped: loss = -2 * 1.2 = -2.4
#          (every token, although the token ratios differ), gradient 0.
#   row 2: same log ratios as row 1, A = -2: -min(-2 * 1.3498588, -2 * 1.2) = 2.6997176, kept.
#   gradient of sum_t m_t l_t w.r.t. logp_t: -A * s on real tokens of unclipped rows
#          row 0: -1.0512711;  row 2: +2.6997176.
E005, E03 = math.exp(0.05), math.exp(0.3)


def _gspo_case():
    log_ratio = t([[0.2, -0.1, 5.0], [0.9, 0.0, 0.0], [0.9, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 3, generator=gen, dtype=F64) - 0.5
    logp = (old + log_ratio).requires_grad_(True)
    adv = t([[1.0], [2.0], [-2.0]]) * mask
    return logp, old, adv, mask


def test_gspo_hand_computed():
    logp, old, adv, mask = _gspo_case()
    loss, metrics = gspo(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    expected = t([[-E005, -E005, 0.0], [-2.4, -2.4, -2.4], [2 * E03, 2 * E03, 2 * E03]])
    torch.testing.assert_close(loss, expected)
    # Every token of a row carries the row's sequence ratio (padding too; it is masked later).
    torch.testing.assert_close(metrics["ratio"], t([[E005] * 3, [E03] * 3, [E03] * 3]))
    assert metrics["clip_fraction"][1].tolist() == [1.0, 1.0, 1.0]
    assert metrics["clip_fraction"][0].sum() == 0 and metrics["clip_fraction"][2].sum() == 0
    grad = _grad((loss * mask).sum(), logp)
    expected_grad = t([[-E005, -E005, 0.0], [0.0, 0.0, 0.0], [2 * E03, 2 * E03, 2 * E03]])
    torch.testing.assert_close(grad, expected_grad)


def test_gspo_every_real_token_shares_the_sequence_ratio():
    logp, old, adv, mask = _random_batch(seed=4)
    _, metrics = gspo(logp, old, adv, mask)
    ratio = metrics["ratio"]
    for i in range(ratio.shape[0]):
        real = ratio[i][mask[i].bool()]
        assert torch.equal(real, real[:1].expand_as(real))
        n = int(mask[i].sum())
        expected = torch.exp((logp[i, :n] - old[i, :n]).mean())
        torch.testing.assert_close(real[0], expected.detach())


def test_gspo_equals_ppo_clip_for_one_token_sequences():
    gen = torch.Generator().manual_seed(9)
    old = -torch.rand(40, 1, generator=gen, dtype=F64) * 2
    logp = (old + torch.randn(40, 1, generator=gen, dtype=F64) * 0.5).requires_grad_(True)
    adv = torch.randn(40, 1, generator=gen, dtype=F64)
    mask = torch.ones(40, 1, dtype=torch.long)
    for lo, hi in ((3e-4, 4e-4), (0.2, 0.28)):
        g_loss, g_metrics = gspo(logp, old, adv, mask, clip_low=lo, clip_high=hi)
        p_loss, p_metrics = ppo_clip(logp, old, adv, clip_low=lo, clip_high=hi)
        torch.testing.assert_close(g_loss, p_loss)
        torch.testing.assert_close(_grad(g_loss.sum(), logp), _grad(p_loss.sum(), logp))
        torch.testing.assert_close(g_metrics["clip_fraction"], p_metrics["clip_fraction"])
    # ... and a single real token followed by padding behaves the same on that token.
    wide_logp = torch.cat([logp.detach(), torch.full((40, 3), 7.0, dtype=F64)], 1)
    wide_old = torch.cat([old, torch.zeros(40, 3, dtype=F64)], 1)
    wide_mask = torch.cat([mask, torch.zeros(40, 3, dtype=torch.long)], 1)
    wide_adv = torch.cat([adv, torch.zeros(40, 3, dtype=F64)], 1)
    g_loss, _ = gspo(wide_logp, wide_old, wide_adv, wide_mask, clip_low=0.2, clip_high=0.28)
    p_loss, _ = ppo_clip(logp.detach(), old, adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(g_loss[:, :1], p_loss)


def test_gspo_token_form_gradient_equals_sequence_level_objective():
    # GSPO's token form with seq_mean_token_mean gives the gradient of the sequence objective
    # J = (1/N) sum_i min(s_i A_i, clip(s_i) A_i), with s_i differentiated through.
    logp, old, adv, mask = _random_batch(seed=21, spread=0.05)
    loss, _ = gspo(logp, old, adv, mask, clip_low=0.02, clip_high=0.03)
    agg = seq_mean_token_mean(loss, mask, total_seqs=float(len(mask)))
    s = torch.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
    a = adv[:, 0]
    objective = torch.minimum(s * a, torch.clamp(s, 0.98, 1.03) * a).mean()
    torch.testing.assert_close(agg, -objective)
    torch.testing.assert_close(_grad(agg, logp), _grad(-objective, logp))


# --------------------------------------------------------------------------- gmpo
#
# clip 0.4 / 0.4 in log space (ratio range (e^-0.4, e^0.4)).
#   row 0: A = +1, mask [1, 1, 1, 0], delta [0.6, -0.2, 0.1, 9.0 (padding)]
#          A > 0 caps delta at +0.4: d = [0.4, -0.2, 0.1]; mean 0.3 / 3 = 0.1
#          s = e^0.1 = 1.1051709; loss on every real token = -1.1051709 (padding: A = 0 -> 0)
#          sequence loss -A s; d/dlogp_t = -A s / 3 on unclipped tokens = -0.3683903, token 0: 0
#   row 1: A = -1, mask [1, 1, 1, 1], delta [-0.7, 0.2, 0.3, -0.2]
#          A < 0 floors delta at -0.4: d = [-0.4, 0.2, 0.3, -0.2]; mean -0.1 / 4 = -0.025
#          s = e^-0.025 = 0.9753099; loss = +0.9753099 per token
#          d/dlogp_t = -A s / 4 = 0.2438275 on tokens 1..3, token 0 (clipped): 0
E01, EM0025 = math.exp(0.1), math.exp(-0.025)


def _gmpo_case():
    delta = t([[0.6, -0.2, 0.1, 9.0], [-0.7, 0.2, 0.3, -0.2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    gen = torch.Generator().manual_seed(6)
    old = -torch.rand(2, 4, generator=gen, dtype=F64) - 0.5
    logp = (old + delta).requires_grad_(True)
    adv = t([[1.0], [-1.0]]) * mask
    return logp, old, adv, mask


def test_gmpo_hand_computed():
    logp, old, adv, mask = _gmpo_case()
    loss, metrics = gmpo(logp, old, adv, mask, clip_low=0.4, clip_high=0.4)
    torch.testing.assert_close(loss, t([[-E01, -E01, -E01, 0.0], [EM0025] * 4]))
    assert metrics["clip_fraction"].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    torch.testing.assert_close(metrics["ratio"], t([[E01] * 4, [EM0025] * 4]))
    # seq_mean_token_mean over N = 2: (1/2)(-A_0 s_0 - A_1 s_1) = (-1.1051709 + 0.9753099) / 2
    agg = seq_mean_token_mean(loss, mask, total_seqs=2.0)
    torch.testing.assert_close(agg, t((-E01 + EM0025) / 2))
    # Gradient of the summed sequence losses -A_i s_i (seq_mean_token_mean with N = 1).
    grad = _grad(seq_mean_token_mean(loss, mask, total_seqs=1.0), logp)
    torch.testing.assert_close(
        grad, t([[0.0, -E01 / 3, -E01 / 3, 0.0], [0.0, EM0025 / 4, EM0025 / 4, EM0025 / 4]])
    )


def test_gmpo_without_clipping_is_the_geometric_mean_of_token_ratios():
    logp, old, adv, mask = _random_batch(seed=8, spread=0.3)
    loss, metrics = gmpo(logp, old, adv, mask, clip_low=100.0, clip_high=100.0)
    for i in range(len(mask)):
        n = int(mask[i].sum())
        ratios = torch.exp(logp[i, :n] - old[i, :n]).detach()
        geo = ratios.prod() ** (1.0 / n)
        torch.testing.assert_close(metrics["ratio"][i, 0], geo)
        torch.testing.assert_close(loss[i, :n].detach(), -adv[i, :n] * geo)
    assert metrics["clip_fraction"].sum() == 0


def test_gmpo_equals_log_space_clipped_ppo_for_one_token_sequences():
    # One token: -A exp(min(delta, eps)) for A > 0 is PPO with 1 + clip_high = e^eps, and
    # -A exp(max(delta, -eps)) for A < 0 is PPO with 1 - clip_low = e^-eps.
    gen = torch.Generator().manual_seed(12)
    old = -torch.rand(60, 1, generator=gen, dtype=F64) * 2
    logp = (old + torch.randn(60, 1, generator=gen, dtype=F64) * 0.6).requires_grad_(True)
    adv = torch.randn(60, 1, generator=gen, dtype=F64)
    mask = torch.ones(60, 1, dtype=torch.long)
    g_loss, g_metrics = gmpo(logp, old, adv, mask, clip_low=0.3, clip_high=0.4)
    p_loss, p_metrics = ppo_clip(
        logp, old, adv, clip_low=1 - math.exp(-0.3), clip_high=math.exp(0.4) - 1
    )
    torch.testing.assert_close(g_loss, p_loss)
    torch.testing.assert_close(_grad(g_loss.sum(), logp), _grad(p_loss.sum(), logp))
    torch.testing.assert_close(g_metrics["clip_fraction"], p_metrics["clip_fraction"])


# --------------------------------------------------------------------------- cispo
#
# clip_low None (no lower bound), clip_high 0.28 (cap 1.28); L = -sg(w) * A * logp.
#   logp [-1.0, -2.0, -0.5], rho [0.5, 1.5, 1.0], A [2, 2, -1]
#   w = [0.5, 1.28 (capped), 1.0]
#   loss = [-0.5 * 2 * -1.0, -1.28 * 2 * -2.0, -1.0 * -1 * -0.5] = [1.0, 5.12, -0.5]
#   grad = -w * A = [-1.0, -2.56, 1.0]   (the capped token still has a gradient)
#   with clip_low 0.2 the first weight becomes 0.8: loss 1.6, grad -1.6


def test_cispo_hand_computed():
    logp = t([[-1.0, -2.0, -0.5]]).requires_grad_(True)
    old = logp.detach() - t([[0.5, 1.5, 1.0]]).log()
    adv = t([[2.0, 2.0, -1.0]])
    loss, metrics = cispo(logp, old, adv, clip_high=0.28)
    torch.testing.assert_close(loss, t([[1.0, 5.12, -0.5]]))
    torch.testing.assert_close(_grad(loss.sum(), logp), t([[-1.0, -2.56, 1.0]]))
    assert metrics["clip_fraction"].tolist() == [[0.0, 1.0, 0.0]]
    loss, metrics = cispo(logp, old, adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, t([[1.6, 5.12, -0.5]]))
    torch.testing.assert_close(_grad(loss.sum(), logp), t([[-1.6, -2.56, 1.0]]))
    assert metrics["clip_fraction"].tolist() == [[1.0, 1.0, 0.0]]


@pytest.mark.parametrize(("clip_low", "clip_high"), [(None, 4.0), (None, 0.28), (0.2, 0.28)])
def test_cispo_gradient_is_clipped_ratio_times_advantage(clip_low, clip_high):
    gen = torch.Generator().manual_seed(13)
    old = -torch.rand(5, 9, generator=gen, dtype=F64) * 3
    logp = (old + torch.randn(5, 9, generator=gen, dtype=F64)).requires_grad_(True)
    adv = torch.randn(5, 9, generator=gen, dtype=F64)
    loss, _ = cispo(logp, old, adv, clip_low=clip_low, clip_high=clip_high)
    ratio = torch.exp(logp - old).detach()
    low = 0.0 if clip_low is None else 1 - clip_low
    expected = -ratio.clamp(low, 1 + clip_high) * adv
    grad = _grad(loss.sum(), logp)
    torch.testing.assert_close(grad, expected)
    assert (grad != 0).all()  # unlike PPO, no token's gradient is dropped


# --------------------------------------------------------------------------- KL k2 / abs
#
#   logp log 0.5, ref log 0.25: k1 = log 2 = 0.6931472; k2 = 0.5 (log 2)^2 = 0.2402265; abs = log 2
#   logp -1, ref -3:            k1 = 2;  k2 = 0.5 * 4 = 2;  abs = 2
#   logp -3, ref -1:            k1 = -2; k2 = 2;            abs = 2


def test_k2_abs_closed_forms():
    logp = t([math.log(0.5), -1.0, -3.0])
    ref = t([math.log(0.25), -3.0, -1.0])
    log2 = math.log(2)
    torch.testing.assert_close(k2(logp, ref), t([0.5 * log2**2, 2.0, 2.0]))
    torch.testing.assert_close(abs_kl(logp, ref), t([log2, 2.0, 2.0]))
    assert KL_ESTIMATORS.get("abs").fn is abs_kl


def test_k2_nonnegative_and_half_k1_squared():
    gen = torch.Generator().manual_seed(17)
    logp = torch.randn(1000, generator=gen) * 3
    ref = torch.randn(1000, generator=gen) * 3
    est = k2(logp, ref)
    assert (est >= 0).all() and (abs_kl(logp, ref) >= 0).all()
    torch.testing.assert_close(est, 0.5 * k1(logp, ref) ** 2)
    assert k2(logp, logp).abs().max() == 0


def test_k2_approximates_kl_for_close_policies_and_abs_overestimates():
    # p vs q = p perturbed by O(delta): both KL and E_p[k2] are delta^2 * (the same Fisher
    # term) + higher order, so their ratio tends to 1 as delta -> 0 (measured here: 1.0042 at
    # delta = 0.1, 1.00004 at delta = 0.01). Exact expectations over the outcomes, no sampling.
    p = t([0.5, 0.3, 0.2])
    for delta, tol in ((0.1, 1e-2), (0.01, 1e-3)):
        q = p * (1 + delta * t([1.0, -1.0, -1.0]))
        q = q / q.sum()
        logp, ref = p.log(), q.log()
        kl = (p * (logp - ref)).sum()
        e_k2 = (p * k2(logp, ref)).sum()
        e_abs = (p * abs_kl(logp, ref)).sum()
        assert abs(e_k2 / kl - 1) < tol, (delta, float(e_k2), float(kl))
        assert e_abs >= kl


# --------------------------------------------------------------------------- aggregation
#
# loss = [[1, 2, 3, 4], [5, 6, 100, 100]], mask = [[1, 1, 1, 1], [1, 1, 0, 0]]
#   seq_mean_token_sum: (1+2+3+4 + 5+6) / 2 seqs = 21 / 2 = 10.5
AGG_LOSS = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0]]
AGG_MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_seq_mean_token_sum_hand_computed():
    loss, mask = t(AGG_LOSS, torch.float32), torch.tensor(AGG_MASK)
    assert seq_mean_token_sum(loss, mask, total_seqs=2).item() == pytest.approx(10.5)
    assert seq_mean_token_sum(loss, mask.bool(), total_seqs=2).item() == pytest.approx(10.5)
    # It is seq_mean_token_sum_norm with C = 1.
    assert seq_mean_token_sum_norm(loss, mask, 2, 4, norm_len=1).item() == pytest.approx(10.5)


@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1, 1], [2, 5], [3, 1, 3], [7]])
def test_seq_mean_token_sum_micro_batches_sum_to_whole_batch(splits):
    gen = torch.Generator().manual_seed(7)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    x = torch.randn(7, 6, generator=gen, dtype=F64, requires_grad=True)
    loss = x.sin() * 3 + 10 * (1 - mask)  # garbage on padding: must be masked
    whole = seq_mean_token_sum(loss, mask, total_seqs=7.0)
    whole_grad = _grad(whole, x, retain_graph=True)  # parts reuse the graph of `loss`
    parts = torch.zeros((), dtype=F64)
    start = 0
    for size in splits:
        rows = slice(start, start + size)
        parts = parts + seq_mean_token_sum(loss[rows], mask[rows], total_seqs=7.0)
        start += size
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(_grad(parts, x), whole_grad)
    assert (whole_grad[mask == 0] == 0).all()


# --------------------------------------------------------------------------- through the registry


@pytest.mark.parametrize("recipe", ["gspo", "cispo", "dapo", "gmpo"])
def test_recipes_run_through_the_registry_like_the_trainer(recipe):
    """What micro_batch_loss does: axis fields (bool/long mask) + logp + old_logp, the recipe's
    policy loss and params, then its aggregation with whole-batch totals. Finite, and it
    back-propagates."""
    preset = RECIPES[recipe]
    logp, old, adv, mask = _random_batch(seed=31)
    fields = {
        "mask": mask.bool(),
        "group": torch.arange(len(mask)) // 2,
        "lengths": mask.sum(-1),
        "advantages": adv,
        "old_logp": old,
        "logp": logp,
    }
    pl = preset["policy_loss"]
    per_token, metrics = POLICY_LOSSES.call(pl["name"], fields, pl.get("params", {}))
    assert per_token.shape == logp.shape
    assert all(v.shape == logp.shape for v in metrics.values())
    totals = {
        "total_tokens": float(mask.sum()),
        "total_seqs": float(len(mask)),
        "max_len": mask.shape[1],
    }
    agg = preset["aggregation"]
    agg_fields = {"loss": per_token, "mask": mask.to(per_token.dtype), **totals}
    value = AGGREGATIONS.call(agg["name"], agg_fields, agg.get("params", {}))
    assert value.dim() == 0 and torch.isfinite(value)
    grad = _grad(value, logp)
    assert torch.isfinite(grad).all() and (grad[mask == 0] == 0).all()


def test_dapo_recipe_is_clip_higher_token_mean_without_kl():
    dapo = RECIPES["dapo"]
    assert dapo["policy_loss"] == {"name": "ppo_clip", "params": {"clip_low": 0.2, "clip_high": 0.28}}
    assert dapo["aggregation"]["name"] == "token_mean" and dapo["kl"]["coef"] == 0.0
    assert AGGREGATIONS.get("token_mean").fn is token_mean
