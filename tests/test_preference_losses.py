"""Preference losses: hand-computed cases (arithmetic in the comments), limits from the papers,
the batch contract, and parity with the installed TRL (DPOTrainer, CPOTrainer, ORPOTrainer).

Notation: r = logp - ref_logp (a completion's log-ratio), h = r_w - r_l (the DPO margin),
l(z) = -log sigmoid(z) = log(1 + e^-z). Two values recur:
    l(1)  = log(1 + e^-1) = 0.31326168751822286
    l(-1) = log(1 + e)    = 1.31326168751822286 = l(1) + 1
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES

F64 = torch.float64
L1 = math.log1p(math.exp(-1.0))  # l(1)
SIG = torch.sigmoid

NAMES = {"dpo", "cdpo", "robust", "ipo", "hinge", "simpo", "cpo", "orpo", "rpo", "fdpo"}
NAMES |= {"apo_zero", "apo_down", "nca", "exo", "sppo_hard"}
CONTRACT = {"chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp"}
CONTRACT |= {"chosen_len", "rejected_len"}
REFERENCE_FREE = {"simpo", "cpo", "orpo"}


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def fields(
    chosen, rejected, ref_chosen=0.0, ref_rejected=0.0, chosen_len=1.0, rejected_len=1.0, dtype=F64
):
    """Batch fields from lists (or scalars); the policy log-probs are leaves that require grad."""

    def col(v):
        return torch.atleast_1d(t(v, dtype))

    return {
        "chosen_logp": col(chosen).requires_grad_(True),
        "rejected_logp": col(rejected).requires_grad_(True),
        "ref_chosen_logp": col(ref_chosen),
        "ref_rejected_logp": col(ref_rejected),
        "chosen_len": col(chosen_len),
        "rejected_len": col(rejected_len),
    }


def call(name, batch, **params):
    return PREFERENCE_LOSSES.call(name, batch, params)


def grads(loss, batch):
    """d(sum of per-pair losses) / d(chosen_logp), d(...)/d(rejected_logp)."""
    return torch.autograd.grad(loss.sum(), [batch["chosen_logp"], batch["rejected_logp"]])


def random_batch(b=7, seed=0, dtype=F64, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    chosen_len = torch.randint(1, 9, (b,), generator=gen).to(dtype)
    rejected_len = torch.randint(1, 9, (b,), generator=gen).to(dtype)
    ref_chosen = -chosen_len * (0.5 + torch.rand(b, generator=gen, dtype=dtype))
    ref_rejected = -rejected_len * (0.5 + torch.rand(b, generator=gen, dtype=dtype))
    chosen = ref_chosen + spread * torch.randn(b, generator=gen, dtype=dtype)
    rejected = ref_rejected + spread * torch.randn(b, generator=gen, dtype=dtype)
    return {
        "chosen_logp": chosen.clamp(max=-0.05).requires_grad_(True),
        "rejected_logp": rejected.clamp(max=-0.05).requires_grad_(True),
        "ref_chosen_logp": ref_chosen,
        "ref_rejected_logp": ref_rejected,
        "chosen_len": chosen_len,
        "rejected_len": rejected_len,
    }


# --------------------------------------------------------------------------- contract


def test_registered_names_and_papers():
    # other modules register more entries (kto, lipo, ...) in the same registry; check ours
    assert NAMES <= set(PREFERENCE_LOSSES.names())
    for entry in (PREFERENCE_LOSSES.get(name) for name in sorted(NAMES)):
        assert entry.paper and entry.arxiv and entry.formula, entry.name
        assert set(entry.inputs) <= CONTRACT, entry.name
        assert {"chosen_logp", "rejected_logp"} <= set(entry.inputs), entry.name
        takes_ref = {"ref_chosen_logp", "ref_rejected_logp"} & set(entry.inputs)
        assert not takes_ref if entry.name in REFERENCE_FREE else takes_ref, entry.name


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", sorted(NAMES))
def test_contract_shapes_grads_and_no_cross_pair_coupling(name, dtype):
    batch = random_batch(dtype=dtype)
    loss, metrics = call(name, batch)
    assert loss.shape == (7,) and loss.dtype == dtype and torch.isfinite(loss).all()
    assert "reward_margin" in metrics
    for key, value in metrics.items():
        assert value.shape == (7,) and not value.requires_grad and torch.isfinite(value).all(), key
    g_chosen, g_rejected = grads(loss, batch)
    assert torch.isfinite(g_chosen).all() and torch.isfinite(g_rejected).all()
    # per-pair: a micro-batch's losses are the same rows of the full batch's (exact accumulation)
    head = {k: v[:3].detach().requires_grad_(v.requires_grad) for k, v in batch.items()}
    torch.testing.assert_close(call(name, head)[0], loss[:3].detach(), rtol=0, atol=0)


def test_bad_hyperparameters_raise():
    batch = random_batch()
    for name, params in [
        ("dpo", {"beta": 0.0}),
        ("robust", {"label_smoothing": 0.5}),
        ("cdpo", {"label_smoothing": -0.1}),
        ("exo", {"label_smoothing": 0.0}),
        ("fdpo", {"divergence": "chi2"}),
        ("fdpo", {"divergence": "alpha", "alpha": 1.0}),
    ]:
        with pytest.raises(ValueError):
            call(name, batch, **params)


# --------------------------------------------------------------------------- dpo
#
# beta = 0.5.  row 1: r_w = -10 - -11 = 1, r_l = -12 - -11 = -1, h = 2, z = beta h = 1 -> l(1)
#              row 2: h = 0 -> log 2;  row 3: h = -2, z = -1 -> l(-1) = l(1) + 1
# dL/dlogp_w = -beta sigmoid(-z): row 1 -0.5 * sigmoid(-1) = -0.5 * 0.26894142 = -0.13447071


def test_dpo_hand_computed():
    batch = fields(
        [-10.0, -5.0, -12.0], [-12.0, -5.0, -10.0], [-11.0, -5.0, -11.0], [-11.0, -5.0, -11.0]
    )
    loss, metrics = call("dpo", batch, beta=0.5)
    torch.testing.assert_close(loss, t([L1, math.log(2.0), L1 + 1.0]))
    torch.testing.assert_close(metrics["chosen_reward"], t([0.5, 0.0, -0.5]))
    torch.testing.assert_close(metrics["reward_margin"], t([1.0, 0.0, -1.0]))
    torch.testing.assert_close(metrics["reward_accuracy"], t([1.0, 0.0, 0.0]))
    g_chosen, g_rejected = grads(loss, batch)
    expected = -0.5 * SIG(-t([1.0, 0.0, -1.0]))
    torch.testing.assert_close(g_chosen, expected)
    torch.testing.assert_close(g_rejected, -expected)


def test_dpo_gradient_is_minus_beta_sigmoid_and_vanishes_with_the_margin():
    margins = [-5.0, 0.0, 2.0, 10.0, 50.0, 400.0]
    batch = fields(margins, [0.0] * len(margins))  # ref 0, so h = chosen_logp
    g_chosen, _ = grads(call("dpo", batch, beta=0.1)[0], batch)
    torch.testing.assert_close(g_chosen, -0.1 * SIG(-0.1 * t(margins)))
    assert abs(float(g_chosen[-1])) < 1e-17  # h = 400: -0.1 * sigmoid(-40) ~ -4e-19


# --------------------------------------------------------------------------- cdpo / robust
#
# cdpo: L = (1-eps) l(z) + eps l(-z) = l(z) + eps z   (since l(-z) = l(z) + z)
#   eps = 0.25, z = 1: l(1) + 0.25 = 0.56326169
# robust: L = [(1-eps) l(z) - eps l(-z)] / (1 - 2 eps)
#   eps = 0.25, z = 1: (0.75 l(1) - 0.25 (l(1) + 1)) / 0.5 = l(1) - 0.5 = -0.18673831


def test_cdpo_and_robust_hand_computed():
    batch = fields([-10.0], [-12.0], [-11.0], [-11.0])  # h = 2
    torch.testing.assert_close(
        call("cdpo", batch, beta=0.5, label_smoothing=0.25)[0], t([L1 + 0.25])
    )
    torch.testing.assert_close(
        call("robust", batch, beta=0.5, label_smoothing=0.25)[0], t([L1 - 0.5])
    )


@pytest.mark.parametrize("name", ["cdpo", "robust", "fdpo"])
def test_reduces_to_dpo(name):
    batch = random_batch()
    params = {"divergence": "reverse_kl"} if name == "fdpo" else {"label_smoothing": 0.0}
    loss, metrics = call(name, batch, beta=0.3, **params)
    ref_loss, ref_metrics = call("dpo", batch, beta=0.3)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-15)
    torch.testing.assert_close(metrics["reward_margin"], ref_metrics["reward_margin"])
    for mine, theirs in zip(grads(loss, batch), grads(ref_loss, batch), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-15)


def test_cdpo_stops_pushing_at_the_smoothed_target():
    # stationary where sigmoid(beta h) = 1 - eps: beta h = log((1 - eps)/eps) = log 9 (eps 0.1);
    # beyond it the gradient on logp_w turns positive (pulls the margin back), unlike DPO
    eps, beta = 0.1, 0.5
    h_star = math.log((1 - eps) / eps) / beta
    batch = fields([h_star, h_star + 10.0], [0.0, 0.0])
    g_chosen, _ = grads(call("cdpo", batch, beta=beta, label_smoothing=eps)[0], batch)
    assert abs(float(g_chosen[0])) < 1e-15 and float(g_chosen[1]) > 0


def test_robust_is_unbiased_under_label_flips():
    # (1 - eps) L(h) + eps L(-h) = l(beta h): in expectation over flips, the clean DPO loss
    batch = random_batch()
    flipped = dict(batch)
    flipped["chosen_logp"], flipped["rejected_logp"] = batch["rejected_logp"], batch["chosen_logp"]
    flipped["ref_chosen_logp"], flipped["ref_rejected_logp"] = (
        batch["ref_rejected_logp"],
        batch["ref_chosen_logp"],
    )
    eps = 0.2
    clean = call("robust", batch, beta=0.2, label_smoothing=eps)[0]
    noisy = call("robust", flipped, beta=0.2, label_smoothing=eps)[0]
    torch.testing.assert_close((1 - eps) * clean + eps * noisy, call("dpo", batch, beta=0.2)[0])


# --------------------------------------------------------------------------- ipo
#
# beta = 0.25, target 1/(2 beta) = 2.  r_w = 1 over 2 tokens -> 0.5; r_l = -1 over 4 -> -0.25
# per-token margin 0.75: L = (0.75 - 2)^2 = 1.5625.   Sequence-level: h = 2 -> L = 0.


def test_ipo_hand_computed():
    batch = fields([-10.0], [-12.0], [-11.0], [-11.0], chosen_len=2.0, rejected_len=4.0)
    loss, metrics = call("ipo", batch, beta=0.25)
    torch.testing.assert_close(loss, t([1.5625]))
    torch.testing.assert_close(metrics["ipo_margin"], t([0.75]))
    torch.testing.assert_close(call("ipo", batch, beta=0.25, length_normalize=False)[0], t([0.0]))


@pytest.mark.parametrize("length_normalize", [True, False])
def test_ipo_gradient_vanishes_at_half_inverse_beta(length_normalize):
    beta, n = 0.1, 4.0
    target = 1.0 / (2 * beta) * (n if length_normalize else 1.0)  # margin in summed log-ratio
    batch = fields([target, target + 1.0], [0.0, 0.0], chosen_len=n, rejected_len=n)
    g_chosen, _ = grads(call("ipo", batch, beta=beta, length_normalize=length_normalize)[0], batch)
    assert float(g_chosen[0]) == 0.0 and float(g_chosen[1]) > 0  # past the target: pulled back


# --------------------------------------------------------------------------- hinge
#
# h = 2: beta 0.25 -> max(0, 1 - 0.5) = 0.5 (grad on logp_w = -beta = -0.25); beta 1 -> 0 (grad 0)


def test_hinge_hand_computed():
    batch = fields([-10.0], [-12.0], [-11.0], [-11.0])
    loss = call("hinge", batch, beta=0.25)[0]
    torch.testing.assert_close(loss, t([0.5]))
    torch.testing.assert_close(grads(loss, batch)[0], t([-0.25]))
    loss = call("hinge", batch, beta=1.0)[0]
    torch.testing.assert_close(loss, t([0.0]))
    torch.testing.assert_close(grads(loss, batch)[0], t([0.0]))


# --------------------------------------------------------------------------- simpo
#
# logp_w = -10 over 5 tokens -> -2; logp_l = -12 over 4 -> -3; per-token margin 1
# beta 2, gamma/beta 0.5: z = 2 (1 - 0.5) = 1 -> l(1). Rewards 2 * -2 = -4, 2 * -3 = -6.


def test_simpo_hand_computed_and_reference_free():
    entry = PREFERENCE_LOSSES.get("simpo")
    assert "ref_chosen_logp" not in entry.inputs and "ref_rejected_logp" not in entry.inputs
    batch = fields([-10.0], [-12.0], [-3.0], [-99.0], chosen_len=5.0, rejected_len=4.0)
    loss, metrics = call("simpo", batch)  # defaults beta 2.0, gamma_beta_ratio 0.5
    torch.testing.assert_close(loss, t([L1]))
    torch.testing.assert_close(metrics["chosen_reward"], t([-4.0]))
    torch.testing.assert_close(metrics["reward_margin"], t([2.0]))
    other_ref = dict(batch, ref_chosen_logp=t([0.0]), ref_rejected_logp=t([0.0]))
    torch.testing.assert_close(call("simpo", other_ref)[0], loss)


def test_simpo_is_length_normalized():
    # doubling a completion (twice the tokens, twice the summed log-prob) changes nothing
    batch = random_batch()
    doubled = {
        k: (2 * v.detach() if k in ("chosen_logp", "chosen_len") else v) for k, v in batch.items()
    }
    torch.testing.assert_close(call("simpo", doubled)[0], call("simpo", batch)[0].detach())


# --------------------------------------------------------------------------- cpo / rpo
#
# cpo, beta 0.5: z = 0.5 (-10 - -12) = 1 -> l(1); NLL = 10 / 5 = 2 -> alpha 1: l(1) + 2
#   label_smoothing 0.25: l(1) + 0.25 * 1 + 2
# rpo, beta 0.5: h = 2 -> l(1); + alpha * 10 / 5


def test_cpo_hand_computed():
    batch = fields([-10.0], [-12.0], chosen_len=5.0, rejected_len=3.0)
    loss, metrics = call("cpo", batch, beta=0.5)
    torch.testing.assert_close(loss, t([L1 + 2.0]))
    torch.testing.assert_close(metrics["nll"], t([2.0]))
    torch.testing.assert_close(metrics["reward_margin"], t([1.0]))
    torch.testing.assert_close(call("cpo", batch, beta=0.5, alpha=0.0)[0], t([L1]))
    smoothed = call("cpo", batch, beta=0.5, label_smoothing=0.25)[0]
    torch.testing.assert_close(smoothed, t([L1 + 0.25 + 2.0]))


def test_cpo_without_nll_is_reference_free_dpo():
    batch = random_batch()
    zero_ref = dict(
        batch,
        ref_chosen_logp=torch.zeros(7, dtype=F64),
        ref_rejected_logp=torch.zeros(7, dtype=F64),
    )
    torch.testing.assert_close(
        call("cpo", batch, beta=0.2, alpha=0.0)[0], call("dpo", zero_ref, beta=0.2)[0]
    )


def test_rpo_hand_computed_and_alpha_zero_is_dpo():
    batch = fields([-10.0], [-12.0], [-11.0], [-11.0], chosen_len=5.0)
    loss, metrics = call("rpo", batch, beta=0.5, alpha=1.0)
    torch.testing.assert_close(loss, t([L1 + 2.0]))
    torch.testing.assert_close(metrics["nll"], t([2.0]))
    torch.testing.assert_close(call("rpo", batch, beta=0.5, alpha=0.3)[0], t([L1 + 0.6]))
    batch = random_batch()
    torch.testing.assert_close(call("rpo", batch, alpha=0.0)[0], call("dpo", batch)[0])


# --------------------------------------------------------------------------- orpo
#
# logp_w = 3 log 0.5 over 3 tokens -> p_w = 0.5, odds 1; logp_l = 2 log 0.2 over 2 -> p_l = 0.2,
# odds 0.25. log odds ratio = log 4; log sigmoid(log 4) = log(4/5). NLL = log 2.
# beta 0.1: L = log 2 - 0.1 log 0.8 = 0.69314718 + 0.02231436 = 0.71546154


def test_orpo_hand_computed():
    batch = fields([3 * math.log(0.5)], [2 * math.log(0.2)], chosen_len=3.0, rejected_len=2.0)
    loss, metrics = call("orpo", batch)
    torch.testing.assert_close(loss, t([math.log(2.0) - 0.1 * math.log(0.8)]))
    torch.testing.assert_close(metrics["log_odds_ratio"], t([math.log(4.0)]))
    torch.testing.assert_close(metrics["nll"], t([math.log(2.0)]))


def test_orpo_equal_odds_and_certain_completion():
    # equal average log-probs: log odds ratio 0, L = NLL + beta log 2
    batch = fields([-3.0], [-1.5], chosen_len=2.0, rejected_len=1.0)
    torch.testing.assert_close(call("orpo", batch, beta=0.5)[0], t([1.5 + 0.5 * math.log(2.0)]))
    # a chosen completion of probability 1 (log-prob 0) stays finite
    batch = fields([0.0], [-2.0], chosen_len=3.0, rejected_len=2.0)
    loss = call("orpo", batch)[0]
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads(loss, batch))


# --------------------------------------------------------------------------- fdpo
#
# forward_kl, f'(u) = 1 - 1/u: u_w = 2 -> 0.5, u_l = 1/2 -> -1; difference 1.5, beta 2/3 -> l(1)
# js, f'(u) = log(2u/(1+u)): u_w = 2 -> log(4/3), u_l = 1/2 -> log(2/3); difference log 2,
#   beta 1/log 2 -> l(1)
# alpha 0.5, f'(u) = (1 - u^-0.5)/0.5: u_w = 4 -> 1, u_l = 1/4 -> -2; difference 3, beta 1/3 -> l(1)


@pytest.mark.parametrize(
    "divergence, alpha, ratio, beta",
    [
        ("forward_kl", 0.5, 2.0, 2.0 / 3.0),
        ("js", 0.5, 2.0, 1.0 / math.log(2.0)),
        ("alpha", 0.5, 4.0, 1.0 / 3.0),
    ],
)
def test_fdpo_hand_computed(divergence, alpha, ratio, beta):
    lr = math.log(ratio)
    batch = fields([lr - 7.0], [-lr - 9.0], [-7.0], [-9.0])
    loss, metrics = call("fdpo", batch, beta=beta, divergence=divergence, alpha=alpha)
    torch.testing.assert_close(loss, t([L1]))
    torch.testing.assert_close(metrics["reward_margin"], t([1.0]))


def test_fdpo_alpha_limits_are_reverse_and_forward_kl():
    batch = random_batch(spread=1.0)
    reverse = call("fdpo", batch, divergence="reverse_kl")[0]
    forward = call("fdpo", batch, divergence="forward_kl")[0]
    torch.testing.assert_close(
        call("fdpo", batch, divergence="alpha", alpha=1e-7)[0], reverse, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        call("fdpo", batch, divergence="alpha", alpha=1 - 1e-7)[0], forward, rtol=0, atol=1e-6
    )


def test_fdpo_saturates_instead_of_overflowing():
    # pi far below pi_ref: u^-1 = e^500 would overflow; the clamped score stays finite
    batch = fields(
        [-600.0, -5.0], [-5.0, -600.0], [-100.0, -5.0], [-5.0, -100.0], dtype=torch.float32
    )
    for divergence in ("forward_kl", "alpha"):
        loss = call("fdpo", batch, divergence=divergence)[0]
        assert torch.isfinite(loss).all() and all(
            torch.isfinite(g).all() for g in grads(loss, batch)
        )


# --------------------------------------------------------------------------- apo / nca / exo / sppo
#
# beta 1, r_w = log 3 (sigmoid 3/4), r_l = -log 3 (sigmoid 1/4); r_w - r_l = log 9 (sigmoid 9/10)
# apo_zero: (1 - 3/4) + 1/4 = 0.5;   apo_down: 3/4 + (1 - 9/10) = 0.85
# nca: -log(3/4) - 0.5 log(1/4) - 0.5 log(3/4) = 0.28768207 + 0.69314718 + 0.14384104 = 1.12467029
# sppo_hard, beta 0.5 (targets +-1): r = (1, -1) -> 0;  r = (0, 0) -> 1 + 1 = 2


def _log3_pair():
    return fields([math.log(3.0) - 4.0], [-math.log(3.0) - 6.0], [-4.0], [-6.0])


def test_apo_hand_computed():
    torch.testing.assert_close(call("apo_zero", _log3_pair(), beta=1.0)[0], t([0.5]))
    torch.testing.assert_close(call("apo_down", _log3_pair(), beta=1.0)[0], t([0.85]))


def test_apo_directions():
    # apo_zero raises the chosen and lowers the rejected likelihood; apo_down always lowers
    # the rejected one (its gradient on logp_l is beta sigmoid'(beta h) > 0)
    batch = random_batch()
    g_chosen, g_rejected = grads(call("apo_zero", batch)[0], batch)
    assert (g_chosen < 0).all() and (g_rejected > 0).all()
    assert (grads(call("apo_down", batch)[0], batch)[1] > 0).all()


def test_nca_hand_computed():
    expected = -math.log(0.75) - 0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    torch.testing.assert_close(call("nca", _log3_pair(), beta=1.0)[0], t([expected]))


def test_exo_hand_computed_and_minimum():
    # beta h = log 9 -> q = 9/10. eps = 0.1: KL([0.9, 0.1] || [0.9, 0.1]) = 0 and the gradient is 0
    batch = _log3_pair()
    loss = call("exo", batch, beta=1.0, label_smoothing=0.1)[0]
    torch.testing.assert_close(loss, t([0.0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(grads(loss, batch)[0], t([0.0]), rtol=0, atol=1e-15)
    # h = 0, eps = 1e-3: q = 1/2 -> 0.5 (log 0.5 - log 0.999) + 0.5 (log 0.5 - log 0.001)
    expected = 0.5 * (math.log(0.5) - math.log(0.999)) + 0.5 * (math.log(0.5) - math.log(0.001))
    torch.testing.assert_close(call("exo", fields([-3.0], [-3.0]))[0], t([expected]))


def test_sppo_hard_hand_computed():
    batch = fields([-4.0, -5.0], [-6.0, -5.0], [-5.0, -5.0], [-5.0, -5.0])  # r = (1, -1), (0, 0)
    loss = call("sppo_hard", batch, beta=0.5)[0]
    torch.testing.assert_close(loss, t([0.0, 2.0]))
    g_chosen, g_rejected = grads(loss, batch)
    torch.testing.assert_close(g_chosen, t([0.0, -2.0]))  # 2 (r_w - 1)
    torch.testing.assert_close(g_rejected, t([0.0, 2.0]))  # 2 (r_l + 1)


# --------------------------------------------------------------------------- parity with TRL
#
# TRL 1.16 has no standalone loss function: DPOTrainer computes every loss inside
# _compute_loss(model, inputs). We build the trainer with object.__new__, set the attributes
# that method reads, precompute the reference log-probs (inputs["ref_*_logps"]) and give it a
# stand-in model whose per-token log-probs sum to the pair's log-probs. One pair per call, so
# TRL's batch mean is that pair's loss; its gradient w.r.t. the stand-in's log-probs is compared
# too. CPO / SimPO / ORPO go through CPOTrainer / ORPOTrainer.get_batch_loss_metrics with a
# stand-in model whose logits come from a table, from which our log-probs are computed as well.

TOL = 1e-6
PARITY_DIFFS: dict[str, float] = {}  # largest |ours - TRL| per case (values and gradients)


def _accelerator():
    return types.SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
    )


def _record(case, ours, theirs):
    diff = float((ours.detach() - theirs.detach()).abs().max())
    PARITY_DIFFS[case] = max(PARITY_DIFFS.get(case, 0.0), diff)
    assert diff <= TOL, f"{case}: |ours - TRL| = {diff}"


@pytest.fixture(scope="module")
def trl_dpo():
    return pytest.importorskip("trl").DPOTrainer


def _dpo_trainer(
    cls,
    loss_type,
    beta,
    loss_weights=None,
    label_smoothing=0.0,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=0.5,
):
    trainer = object.__new__(cls)
    attrs = {
        "accelerator": _accelerator(),
        "beta": beta,
        "loss_types": loss_type,
        "loss_weights": loss_weights or [1.0] * len(loss_type),
        "ld_alpha": None,
        "f_divergence_type": f_divergence_type,
        "f_alpha_divergence_coef": f_alpha_divergence_coef,
        "label_smoothing": label_smoothing,
        "use_weighting": False,
        "precompute_ref_logps": True,
        "aux_loss_enabled": False,
        "_total_train_tokens": 0,
        "_tp_size": 1,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
    }
    for key, value in attrs.items():
        setattr(trainer, key, value)
    return trainer


class _TokenLogpModel:
    """Stands in for the policy: returns the given per-token log-probs [2, T-1]."""

    training = True

    def __init__(self, token_logp):
        self.token_logp = token_logp

    def __call__(self, input_ids, **kwargs):
        shape = (input_ids.shape[0], input_ids.shape[1] - 1)
        return types.SimpleNamespace(
            log_probs=self.token_logp,
            entropy=torch.zeros(shape),
            mean_logits=torch.zeros(shape),
            is_top1=torch.zeros(shape, dtype=torch.bool),
        )


def _trl_dpo_pair(trainer, logps, lens, dtype):
    """TRL's loss for one pair and its gradient w.r.t. the chosen / rejected log-probs."""
    chosen, rejected, ref_chosen, ref_rejected = logps
    width = int(max(lens)) + 2
    completion_mask = torch.zeros(2, width, dtype=torch.long)
    for row, n in enumerate(lens):
        completion_mask[row, width - int(n) :] = 1  # completion at the end, never position 0
    token_logp = torch.zeros(2, width - 1, dtype=dtype)
    token_logp[0, -1], token_logp[1, -1] = chosen, rejected  # sums over the row = the log-probs
    token_logp.requires_grad_(True)
    trainer.model = _TokenLogpModel(token_logp)
    inputs = {
        "input_ids": torch.zeros(2, width, dtype=torch.long),
        "attention_mask": torch.ones(2, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": t([ref_chosen], dtype),
        "ref_rejected_logps": t([ref_rejected], dtype),
    }
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    (grad,) = torch.autograd.grad(loss, token_logp)
    return loss.detach(), grad[:, -1]


# (case id, our entry, our params, TRL DPOTrainer settings, dtype)
DPO_PARITY = [
    ("sigmoid", "dpo", {"beta": 0.1}, {"loss_type": ["sigmoid"]}, F64),
    ("sigmoid-b0.5", "dpo", {"beta": 0.5}, {"loss_type": ["sigmoid"], "beta": 0.5}, F64),
    (
        "robust",
        "robust",
        {"label_smoothing": 0.1},
        {"loss_type": ["robust"], "label_smoothing": 0.1},
        F64,
    ),
    (
        "robust-0.3",
        "robust",
        {"beta": 0.3, "label_smoothing": 0.3},
        {"loss_type": ["robust"], "beta": 0.3, "label_smoothing": 0.3},
        F64,
    ),
    ("ipo", "ipo", {"beta": 0.1}, {"loss_type": ["ipo"]}, F64),
    ("ipo-b1", "ipo", {"beta": 1.0}, {"loss_type": ["ipo"], "beta": 1.0}, F64),
    ("hinge", "hinge", {"beta": 0.1}, {"loss_type": ["hinge"]}, F64),
    ("hinge-b0.5", "hinge", {"beta": 0.5}, {"loss_type": ["hinge"], "beta": 0.5}, F64),
    ("nca_pair", "nca", {"beta": 0.1}, {"loss_type": ["nca_pair"]}, F64),
    ("nca_pair-b0.5", "nca", {"beta": 0.5}, {"loss_type": ["nca_pair"], "beta": 0.5}, F64),
    ("exo_pair", "exo", {"beta": 0.1}, {"loss_type": ["exo_pair"], "label_smoothing": 1e-3}, F64),
    (
        "exo_pair-0.05",
        "exo",
        {"beta": 0.5, "label_smoothing": 0.05},
        {"loss_type": ["exo_pair"], "beta": 0.5, "label_smoothing": 0.05},
        F64,
    ),
    ("apo_zero", "apo_zero", {"beta": 0.1}, {"loss_type": ["apo_zero"]}, F64),
    ("apo_zero-b0.5", "apo_zero", {"beta": 0.5}, {"loss_type": ["apo_zero"], "beta": 0.5}, F64),
    ("apo_down", "apo_down", {"beta": 0.1}, {"loss_type": ["apo_down"]}, F64),
    ("apo_down-b0.5", "apo_down", {"beta": 0.5}, {"loss_type": ["apo_down"], "beta": 0.5}, F64),
    ("sppo_hard", "sppo_hard", {"beta": 0.1}, {"loss_type": ["sppo_hard"]}, F64),
    ("sppo_hard-b0.5", "sppo_hard", {"beta": 0.5}, {"loss_type": ["sppo_hard"], "beta": 0.5}, F64),
    # conservative DPO: TRL 1.16's "sigmoid" ignores label_smoothing; "aot" on a batch of one
    # pair (sorting one element is the identity) is exactly the label-smoothed sigmoid
    (
        "aot(B=1)=cdpo",
        "cdpo",
        {"label_smoothing": 0.1},
        {"loss_type": ["aot"], "label_smoothing": 0.1},
        F64,
    ),
    (
        "aot(B=1)=cdpo-0.3",
        "cdpo",
        {"beta": 0.5, "label_smoothing": 0.3},
        {"loss_type": ["aot"], "beta": 0.5, "label_smoothing": 0.3},
        F64,
    ),
    # RPO: DPO + alpha * per-token NLL of the chosen completion = ["sigmoid", "sft"] weighted
    ("sigmoid+sft=rpo", "rpo", {"alpha": 1.0}, {"loss_type": ["sigmoid", "sft"]}, F64),
    (
        "sigmoid+sft=rpo-0.3",
        "rpo",
        {"beta": 0.5, "alpha": 0.3},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.3], "beta": 0.5},
        F64,
    ),
    # f-DPO: TRL's alpha-divergence coefficient c is our 1 - alpha (TRL has no float64 clamp
    # bound, so that divergence is compared in float32)
    ("f:reverse_kl", "fdpo", {"divergence": "reverse_kl"}, {"loss_type": ["sigmoid"]}, F64),
    (
        "f:forward_kl",
        "fdpo",
        {"divergence": "forward_kl"},
        {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
        F64,
    ),
    (
        "f:js_divergence",
        "fdpo",
        {"divergence": "js", "beta": 0.5},
        {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence", "beta": 0.5},
        F64,
    ),
    (
        "f:alpha_divergence-0.5",
        "fdpo",
        {"divergence": "alpha", "alpha": 0.5},
        {"loss_type": ["sigmoid"], "f_divergence_type": "alpha_divergence"},
        torch.float32,
    ),
    (
        "f:alpha_divergence-c0.7",
        "fdpo",
        {"divergence": "alpha", "alpha": 0.3, "beta": 0.5},
        {
            "loss_type": ["sigmoid"],
            "f_divergence_type": "alpha_divergence",
            "f_alpha_divergence_coef": 0.7,
            "beta": 0.5,
        },
        torch.float32,
    ),
]


@pytest.mark.parametrize(
    "case, name, params, settings, dtype", DPO_PARITY, ids=[c[0] for c in DPO_PARITY]
)
def test_parity_with_trl_dpo_trainer(trl_dpo, case, name, params, settings, dtype):
    settings = dict(settings)
    trainer = _dpo_trainer(
        trl_dpo, settings.pop("loss_type"), settings.pop("beta", 0.1), **settings
    )
    batch = random_batch(b=6, seed=1, dtype=dtype)
    loss, _ = call(name, batch, **params)
    g_chosen, g_rejected = grads(loss, batch)
    for i in range(6):
        logps = [
            float(batch[k][i].detach())
            for k in ("chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
        ]
        lens = (float(batch["chosen_len"][i]), float(batch["rejected_len"][i]))
        trl_loss, trl_grad = _trl_dpo_pair(trainer, logps, lens, dtype)
        _record(case, loss[i], trl_loss)
        _record(case, torch.stack([g_chosen[i], g_rejected[i]]), trl_grad)


def test_our_defaults_match_trl_configs():
    trl = pytest.importorskip("trl")
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    def default(config, key):
        return config.__dataclass_fields__[key].default

    for name in (
        "dpo",
        "cdpo",
        "robust",
        "ipo",
        "hinge",
        "rpo",
        "fdpo",
        "apo_zero",
        "apo_down",
        "nca",
        "exo",
        "sppo_hard",
    ):
        assert PREFERENCE_LOSSES.get(name).params["beta"] == default(trl.DPOConfig, "beta"), name
    # fdpo's alpha is TRL's 1 - f_alpha_divergence_coef; at the default 0.5 the two coincide
    assert PREFERENCE_LOSSES.get("fdpo").params["alpha"] == default(
        trl.DPOConfig, "f_alpha_divergence_coef"
    )
    cpo_params = PREFERENCE_LOSSES.get("cpo").params
    assert cpo_params["beta"] == default(CPOConfig, "beta")
    assert cpo_params["alpha"] == default(CPOConfig, "cpo_alpha")
    assert cpo_params["label_smoothing"] == default(CPOConfig, "label_smoothing")
    assert PREFERENCE_LOSSES.get("orpo").params["beta"] == default(ORPOConfig, "beta")


# ---- CPOTrainer / ORPOTrainer: a stand-in model with logits = table[input_ids]

VOCAB = 7


class _TableModel:
    def __init__(self, table):
        self.table = table

    def __call__(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        return types.SimpleNamespace(logits=self.table[input_ids])


def _pair_tokens(gen, n_chosen, n_rejected):
    """A one-token prompt (id 0) followed by each completion's random tokens."""
    batch = {}
    for side, n in (("chosen", n_chosen), ("rejected", n_rejected)):
        ids = torch.cat(
            [torch.zeros(1, dtype=torch.long), torch.randint(1, VOCAB, (n,), generator=gen)]
        )
        batch[f"{side}_input_ids"] = ids[None]
        batch[f"{side}_attention_mask"] = torch.ones(1, n + 1, dtype=torch.long)
        batch[f"{side}_labels"] = torch.cat([torch.tensor([-100]), ids[1:]])[None]
    return batch


def _our_logps(table, batch):
    """Summed completion log-probs under logits = table[token] (next-token prediction)."""
    out = {}
    for side in ("chosen", "rejected"):
        ids = batch[f"{side}_input_ids"][0]
        logp = torch.log_softmax(table[ids[:-1]], dim=-1).gather(-1, ids[1:, None]).sum()
        out[f"{side}_logp"] = logp[None]
        out[f"{side}_len"] = torch.tensor([float(len(ids) - 1)], dtype=F64)
    return out


def _cpo_like_trainer(cls, **attrs):
    trainer = object.__new__(cls)
    base = {
        "accelerator": _accelerator(),
        "is_encoder_decoder": False,
        "aux_loss_enabled": False,
        "pad_token_id": 0,
        "padding_value": 0,
        "alpha": 0.0,
    }
    for key, value in {**base, **attrs}.items():
        setattr(trainer, key, value)
    return trainer


# (case id, our entry, our params, "cpo" or "orpo", TRL trainer attributes)
CPO_PARITY = [
    (
        "cpo-sigmoid",
        "cpo",
        {},
        "cpo",
        {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0},
    ),
    (
        "cpo-sigmoid-smoothed",
        "cpo",
        {"beta": 0.5, "alpha": 0.5, "label_smoothing": 0.1},
        "cpo",
        {"loss_type": "sigmoid", "beta": 0.5, "cpo_alpha": 0.5, "label_smoothing": 0.1},
    ),
    (
        "simpo",
        "simpo",
        {},
        "cpo",
        {
            "loss_type": "simpo",
            "beta": 2.0,
            "simpo_gamma": 1.0,
            "cpo_alpha": 0.0,
            "label_smoothing": 0.0,
        },
    ),
    (
        "simpo-smoothed",
        "simpo",
        {"beta": 2.5, "gamma_beta_ratio": 0.4, "label_smoothing": 0.1},
        "cpo",
        {
            "loss_type": "simpo",
            "beta": 2.5,
            "simpo_gamma": 1.0,
            "cpo_alpha": 0.0,
            "label_smoothing": 0.1,
        },
    ),
    ("orpo", "orpo", {}, "orpo", {"beta": 0.1}),
    ("orpo-b0.5", "orpo", {"beta": 0.5}, "orpo", {"beta": 0.5}),
]


@pytest.mark.parametrize(
    "case, name, params, trainer_kind, attrs", CPO_PARITY, ids=[c[0] for c in CPO_PARITY]
)
def test_parity_with_trl_cpo_and_orpo_trainers(case, name, params, trainer_kind, attrs):
    pytest.importorskip("trl")
    if trainer_kind == "cpo":
        from trl.experimental.cpo import CPOTrainer as cls
    else:
        from trl.experimental.orpo import ORPOTrainer as cls
    trainer = _cpo_like_trainer(cls, **attrs)
    gen = torch.Generator().manual_seed(2)
    for n_chosen, n_rejected in [(3, 5), (1, 1), (6, 2), (4, 4)]:
        table = (1.5 * torch.randn(VOCAB, VOCAB, generator=gen, dtype=F64)).requires_grad_(True)
        batch = _pair_tokens(gen, n_chosen, n_rejected)
        trl_loss, _ = trainer.get_batch_loss_metrics(_TableModel(table), batch)
        (trl_grad,) = torch.autograd.grad(trl_loss, table)
        loss, _ = call(name, _our_logps(table, batch), **params)
        (grad,) = torch.autograd.grad(loss.sum(), table)
        _record(case, loss[0], trl_loss)
        _record(case, grad, trl_grad)
