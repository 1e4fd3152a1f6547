"""More preference losses: kto, lipo, cpl / cpl_kl, tgdpo, treg.

Hand-computed cases (arithmetic in the comments), the reductions each paper's form implies
(derived in the comments), masking, gradients against hand-derived ones, and KTO against TRL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES
from rewardlab.algorithms.preference_losses_more import (
    cpl,
    cpl_kl,
    dpo_implicit_token_rewards,
    kto,
    kto_reference_point,
    lipo,
    lipo_lambda_weights,
    tgdpo,
    treg,
    treg_token_rewards,
)

F64 = torch.float64
NAMES = ("kto", "lipo", "cpl", "cpl_kl", "tgdpo", "treg")


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _dpo(margin_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO per pair from ``(logp_w - ref_w) - (logp_l - ref_l)``."""
    return -F.logsigmoid(beta * margin_logratio)


def _token_pair(b=4, tw=5, tl=4, seed=0):
    """Random per-token pairwise fields; policy log-probs require grad; NaN on padding."""
    gen = torch.Generator().manual_seed(seed)

    def side(width):
        lengths = torch.randint(1, width + 1, (b,), generator=gen)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        ref = -torch.rand(b, width, generator=gen, dtype=F64) * 3 - 0.1
        logp = ref + torch.randn(b, width, generator=gen, dtype=F64) * 0.5
        logp = torch.where(mask, logp, torch.nan).requires_grad_(True)
        ref = torch.where(mask, ref, torch.nan)
        rewards = torch.where(mask, torch.randn(b, width, generator=gen, dtype=F64), torch.nan)
        return logp, ref, mask, rewards

    cw, rcw, mw, rw = side(tw)
    cl, rcl, ml, rl = side(tl)
    return {
        "chosen_token_logp": cw,
        "rejected_token_logp": cl,
        "ref_chosen_token_logp": rcw,
        "ref_rejected_token_logp": rcl,
        "chosen_mask": mw,
        "rejected_mask": ml,
        "chosen_token_rewards": rw,
        "rejected_token_rewards": rl,
    }


def _summed_margin(f):
    """``(sum d_w) - (sum d_l)`` over real tokens, d = logp - ref (NaN padding selected away)."""

    def s(x, m):
        return torch.where(m, x, 0.0).sum(-1)

    dw = s(f["chosen_token_logp"] - f["ref_chosen_token_logp"], f["chosen_mask"])
    dl = s(f["rejected_token_logp"] - f["ref_rejected_token_logp"], f["rejected_mask"])
    return dw, dl


# --------------------------------------------------------------------------- registry


def test_entries_are_registered_with_their_fields_and_defaults():
    for name in NAMES:
        assert name in PREFERENCE_LOSSES
        assert PREFERENCE_LOSSES.get(name).paper
        assert PREFERENCE_LOSSES.get(name).arxiv
    assert PREFERENCE_LOSSES.get("kto").inputs == ("logp", "ref_logp", "label", "kl")
    assert PREFERENCE_LOSSES.get("kto").params == {
        "beta": 0.1,
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
    }
    assert PREFERENCE_LOSSES.get("lipo").inputs == (
        "list_logp",
        "list_ref_logp",
        "list_scores",
        "list_mask",
    )
    assert PREFERENCE_LOSSES.get("cpl").inputs == (
        "chosen_logp",
        "rejected_logp",
        "chosen_len",
        "rejected_len",
    )
    assert PREFERENCE_LOSSES.get("cpl").params["contrastive_bias"] == 0.5
    assert PREFERENCE_LOSSES.get("tgdpo").params == {"beta": 0.1, "alpha": 0.5}
    assert "chosen_token_rewards" in PREFERENCE_LOSSES.get("treg").inputs
    assert PREFERENCE_LOSSES.get("treg").params == {"beta": 0.1, "alpha": 0.25}


def test_registry_call_returns_per_row_loss_and_metrics():
    f = _token_pair(b=3)
    loss, metrics = PREFERENCE_LOSSES.call("tgdpo", f, {"alpha": 0.2})
    assert loss.shape == (3,)
    assert all(v.shape == (3,) and not v.requires_grad for v in metrics.values())


# --------------------------------------------------------------------------- kto
#
# beta = 0.5, z0 = 0.4, lambda_D = 2, lambda_U = 0.5.
#   desirable:   logp = -1, ref = -2 -> r = 1;  L = 2 * (1 - sigmoid(0.5 * (1 - 0.4)))
#                = 2 * (1 - sigmoid(0.3)) = 2 * (1 - 0.5744425) = 0.8511150
#   undesirable: logp = -3, ref = -2 -> r = -1; L = 0.5 * (1 - sigmoid(0.5 * (0.4 - -1)))
#                = 0.5 * (1 - sigmoid(0.7)) = 0.5 * (1 - 0.6681878) = 0.1659061


def test_kto_hand_computed():
    logp = t([-1.0, -3.0]).requires_grad_(True)
    loss, metrics = kto(
        logp,
        t([-2.0, -2.0]),
        torch.tensor([True, False]),
        t(0.4),
        beta=0.5,
        desirable_weight=2.0,
        undesirable_weight=0.5,
    )
    torch.testing.assert_close(loss, t([0.8511149664, 0.1659061139]))
    torch.testing.assert_close(metrics["reward"], t([0.5, -0.5]))
    torch.testing.assert_close(metrics["kl"], t([0.4, 0.4]))
    # dL/dlogp: desirable -lambda_D beta s (1 - s), s = sigmoid(0.3);
    #           undesirable +lambda_U beta s (1 - s), s = sigmoid(0.7).
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    s1, s2 = 1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(-0.7))
    torch.testing.assert_close(grad, t([-2 * 0.5 * s1 * (1 - s1), 0.5 * 0.5 * s2 * (1 - s2)]))


def test_kto_desirable_loss_decreases_and_undesirable_increases_with_the_log_ratio():
    logratio = torch.linspace(-5.0, 5.0, 41, dtype=F64)
    zeros = torch.zeros_like(logratio)
    good, _ = kto(logratio, zeros, torch.ones(41, dtype=torch.bool), t(0.3))
    bad, _ = kto(logratio, zeros, torch.zeros(41, dtype=torch.bool), t(0.3))
    assert (good.diff() < 0).all()
    assert (bad.diff() > 0).all()


def test_kto_with_a_zero_reference_point_is_trl_apo_zero_unpaired():
    # TRL's apo_zero_unpaired: 1 - sigmoid(beta r) (desirable), sigmoid(beta r) (undesirable);
    # KTO's undesirable loss at z0 = 0 is 1 - sigmoid(-beta r) = sigmoid(beta r).
    r = t([-2.0, -0.5, 0.0, 1.5])
    label = torch.tensor([True, False, True, False])
    loss, _ = kto(r, torch.zeros(4, dtype=F64), label, t(0.0), beta=0.2)
    expected = torch.where(label, 1 - torch.sigmoid(0.2 * r), torch.sigmoid(0.2 * r))
    torch.testing.assert_close(loss, expected)


def test_kto_reference_point_is_not_differentiated():
    logp = t([-1.0, -2.0]).requires_grad_(True)
    kl = t(0.5).requires_grad_(True)
    loss, _ = kto(logp, t([-1.5, -1.0]), torch.tensor([True, False]), kl)
    loss.sum().backward()
    assert kl.grad is None
    assert logp.grad is not None


def test_kto_reference_point_is_a_clamped_detached_mean():
    logp = t([-1.0, -2.0, -4.0]).requires_grad_(True)
    # mean(logp - ref) = mean(1, -0.5, 1) = 0.5
    z0 = kto_reference_point(logp, t([-2.0, -1.5, -5.0]))
    assert z0.shape == () and not z0.requires_grad
    torch.testing.assert_close(z0, t(0.5))
    # mean(-1, -1, -1) = -1 -> clamped to 0
    torch.testing.assert_close(kto_reference_point(t([-2.0] * 3), t([-1.0] * 3)), t(0.0))


def _trl_kto_loss(logp, ref_logp, label, kl_logp, ref_kl_logp, beta, wd, wu):
    """TRL's KTOTrainer._compute_loss driven by a stub model: no weights, no tokenizer.

    Every sequence is 2 tokens long, so TRL's per-token log-probs are [B, 1] and their sums are
    exactly the summed log-probs given here; the KL forward is told apart by its input ids.
    """
    kto_trainer = pytest.importorskip("trl.trainer.kto_trainer")
    b = logp.shape[0]

    class StubModel:
        training = True

        def __call__(self, input_ids, **kwargs):
            lp = kl_logp if bool((input_ids == 1).all()) else logp
            zeros = torch.zeros(b, 1, dtype=lp.dtype)
            return SimpleNamespace(log_probs=lp[:, None], entropy=zeros, mean_logits=zeros)

    class StubAccelerator:
        device = torch.device("cpu")

        def gather_for_metrics(self, x):
            return x

    trainer = object.__new__(kto_trainer.KTOTrainer)
    trainer.__dict__.update(
        model=StubModel(),
        accelerator=StubAccelerator(),
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type="kto",
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    ones = torch.ones(b, 2, dtype=torch.long)
    batch = {
        "input_ids": torch.zeros(b, 2, dtype=torch.long),
        "attention_mask": ones,
        "completion_mask": ones,
        "KL_input_ids": ones.clone(),
        "KL_attention_mask": ones,
        "KL_completion_mask": ones,
        "label": label,
        "ref_logps": ref_logp,
        "ref_KL_logps": ref_kl_logp,
    }
    loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    return loss, trainer._metrics["train"]["kl"][-1]


@pytest.mark.parametrize("kl_shift", [0.8, -0.8])  # a positive z0, and one TRL clamps to 0
def test_kto_batch_mean_matches_trl_kto_trainer(kl_shift):
    gen = torch.Generator().manual_seed(3)
    b = 7
    ref_logp = -torch.rand(b, generator=gen, dtype=F64) * 20 - 1
    logp = ref_logp + torch.randn(b, generator=gen, dtype=F64) * 3
    ref_kl_logp = -torch.rand(b, generator=gen, dtype=F64) * 20 - 1
    kl_logp = ref_kl_logp + kl_shift + torch.randn(b, generator=gen, dtype=F64) * 0.1
    label = torch.tensor([True, False, True, True, False, False, True])
    beta, wd, wu = 0.3, 1.5, 0.7

    trl_loss, trl_kl = _trl_kto_loss(logp, ref_logp, label, kl_logp, ref_kl_logp, beta, wd, wu)
    z0 = kto_reference_point(kl_logp, ref_kl_logp)
    loss, _ = kto(logp, ref_logp, label, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert z0.item() == pytest.approx(trl_kl, abs=1e-12)
    torch.testing.assert_close(loss.mean(), trl_loss)


# --------------------------------------------------------------------------- lipo
#
# beta = 1, one list of K = 3: s = logp - ref = [0.5, 1.0, -0.5], psi = [1, 0, 2].
# Gains G = 2^psi - 1 = [1, 0, 3]. Ranks by s (descending): item 1 -> 1, item 0 -> 2,
# item 2 -> 3, so 1/D = 1/log2(1 + rank) = [1/log2 3, 1, 1/2] = [0.6309298, 1, 0.5].
# Pairs with psi_i > psi_j: (0, 1), (2, 0), (2, 1).
#   (0, 1): delta = |1 - 0| * |0.6309298 - 1|   = 0.3690702; -log sig(0.5 - 1.0) = 0.9740770
#   (2, 0): delta = |3 - 1| * |0.5 - 0.6309298| = 0.2618595; -log sig(-0.5 - 0.5) = 1.3132617
#   (2, 1): delta = |3 - 0| * |0.5 - 1|         = 1.5;       -log sig(-0.5 - 1.0) = 1.7014133
# L = 0.3690702 * 0.9740770 + 0.2618595 * 1.3132617 + 1.5 * 1.7014133 = 3.2555128


def _lipo_case():
    return {
        "list_logp": t([[-1.5, -1.0, -3.5]]).requires_grad_(True),
        "list_ref_logp": t([[-2.0, -2.0, -3.0]]),
        "list_scores": t([[1.0, 0.0, 2.0]]),
        "list_mask": torch.tensor([[True, True, True]]),
    }


def test_lipo_hand_computed():
    f = _lipo_case()
    loss, metrics = lipo(**f, beta=1.0)
    torch.testing.assert_close(loss, t([3.2555128078]))
    torch.testing.assert_close(metrics["num_pairs"], t([3.0]))
    # the model orders all three pairs the wrong way (s_0 < s_1, s_2 < s_0, s_2 < s_1)
    torch.testing.assert_close(metrics["pair_accuracy"], t([0.0]))
    weight, pairs = lipo_lambda_weights(t([[0.5, 1.0, -0.5]]), f["list_scores"], f["list_mask"])
    assert pairs[0].nonzero().tolist() == [[0, 1], [2, 0], [2, 1]]
    torch.testing.assert_close(weight[0, 2, 1], t(1.5))


def test_lipo_ignores_masked_items():
    f = _lipo_case()
    reference, _ = lipo(**f, beta=1.0)
    # A padded 4th item with the best score and the best implicit reward would, if real, form
    # pairs and take rank 1 (shifting every real rank); NaN log-probs must not leak either.
    for pad_logp in (5.0, math.nan):
        logp = torch.cat([f["list_logp"].detach(), t([[pad_logp]])], -1).requires_grad_(True)
        loss, metrics = lipo(
            logp,
            torch.cat([f["list_ref_logp"], t([[-2.0]])], -1),
            torch.cat([f["list_scores"], t([[9.0]])], -1),
            torch.cat([f["list_mask"], torch.tensor([[False]])], -1),
            beta=1.0,
        )
        torch.testing.assert_close(loss, reference)
        torch.testing.assert_close(metrics["num_pairs"], t([3.0]))
        (grad,) = torch.autograd.grad(loss.sum(), logp)
        assert torch.isfinite(grad).all() and grad[0, 3] == 0


def test_lipo_with_two_items_is_a_weighted_dpo_pair():
    # K = 2, psi_w > psi_l: the items hold ranks 1 and 2 in either order, so
    # |1/D(tau_w) - 1/D(tau_l)| = 1/log2(2) - 1/log2(3) = 1 - 1/log2 3 always, and
    # L = (2^psi_w - 2^psi_l) * (1 - 1/log2 3) * -log sigmoid(beta ((lw - rw) - (ll - rl))).
    gen = torch.Generator().manual_seed(1)
    b, beta = 8, 0.2
    ref = -torch.rand(b, 2, generator=gen, dtype=F64) * 10
    logp = (ref + torch.randn(b, 2, generator=gen, dtype=F64) * 4).requires_grad_(True)
    scores = torch.rand(b, 2, generator=gen, dtype=F64)
    scores[:, 0] += 1.0  # item 0 is always the preferred one
    loss, _ = lipo(logp, ref, scores, torch.ones(b, 2, dtype=torch.bool), beta=beta)

    logratio = logp - ref
    assert (logratio[:, 0] < logratio[:, 1]).any() and (logratio[:, 0] > logratio[:, 1]).any()
    weight = (2 ** scores[:, 0] - 2 ** scores[:, 1]) * (1 - 1 / math.log2(3))
    expected = weight * _dpo(logratio[:, 0] - logratio[:, 1], beta)
    torch.testing.assert_close(loss, expected)
    g1 = torch.autograd.grad(loss.sum(), logp, retain_graph=True)[0]
    g2 = torch.autograd.grad(expected.sum(), logp)[0]
    torch.testing.assert_close(g1, g2)


def test_lipo_label_ties_and_single_items_give_zero_loss():
    loss, metrics = lipo(
        t([[-1.0, -2.0], [-1.0, -2.0]]),
        t([[-1.5, -1.5], [-1.5, -1.5]]),
        t([[0.5, 0.5], [1.0, 0.0]]),
        torch.tensor([[True, True], [True, False]]),
    )
    torch.testing.assert_close(loss, t([0.0, 0.0]))
    torch.testing.assert_close(metrics["num_pairs"], t([0.0, 0.0]))


# --------------------------------------------------------------------------- cpl
#
# alpha = 0.1, lambda = 0.5: S_w = -10, S_l = -12.
#   logit = 0.1 * -10 - 0.5 * 0.1 * -12 = -1 + 0.6 = -0.4;  L = -log sigmoid(-0.4) = 0.9130153
#   BC (both completions, 5 + 7 tokens): (10 + 12) / 12 = 1.8333333; with c_bc = 0.5:
#   L = 0.9130153 + 0.9166667 = 1.8296819
#   BC on the chosen completion only: 10 / 5 = 2 -> L = 0.9130153 + 1 = 1.9130153


def test_cpl_hand_computed():
    args = (t([-10.0]), t([-12.0]), t([5.0]), t([7.0]))
    loss, metrics = cpl(*args, alpha=0.1, contrastive_bias=0.5)
    torch.testing.assert_close(loss, t([0.9130152524]))
    torch.testing.assert_close(metrics["bc_loss"], t([22 / 12]))
    loss, _ = cpl(*args, alpha=0.1, contrastive_bias=0.5, bc_coeff=0.5)
    torch.testing.assert_close(loss, t([1.8296819191]))
    loss, _ = cpl(*args, alpha=0.1, contrastive_bias=0.5, bc_coeff=0.5, bc_chosen_only=True)
    torch.testing.assert_close(loss, t([1.9130152524]))


def test_cpl_without_bias_is_reference_free_dpo_and_cpl_kl_is_dpo():
    gen = torch.Generator().manual_seed(2)
    lw, ll, rw, rl = (-torch.rand(5, generator=gen, dtype=F64) * 30 for _ in range(4))
    n = torch.full((5,), 10.0, dtype=F64)
    loss, _ = cpl(lw, ll, n, n, alpha=0.05, contrastive_bias=1.0)
    torch.testing.assert_close(loss, _dpo(lw - ll, 0.05))
    loss, _ = cpl_kl(lw, ll, rw, rl, n, n, alpha=0.05, contrastive_bias=1.0)
    torch.testing.assert_close(loss, _dpo((lw - rw) - (ll - rl), 0.05))


def test_cpl_conservative_bias_pushes_both_log_probs_up():
    # d/dS_w = -alpha (1 - s), d/dS_l = +lambda alpha (1 - s), s = sigmoid(alpha S_w - lambda
    # alpha S_l): with lambda < 1 the rejected segment is pushed down less than the chosen is
    # pushed up.
    sw = t([-10.0]).requires_grad_(True)
    sl = t([-12.0]).requires_grad_(True)
    loss, _ = cpl(sw, sl, t([5.0]), t([7.0]), alpha=0.1, contrastive_bias=0.5)
    gw, gl = torch.autograd.grad(loss.sum(), (sw, sl))
    s = 1 / (1 + math.exp(0.4))
    torch.testing.assert_close(gw, t([-0.1 * (1 - s)]))
    torch.testing.assert_close(gl, t([0.05 * (1 - s)]))


@pytest.mark.parametrize("bias", [0.0, 1.5])
def test_cpl_rejects_a_bias_outside_0_1(bias):
    with pytest.raises(ValueError, match="contrastive_bias"):
        cpl(t([-1.0]), t([-2.0]), t([1.0]), t([1.0]), contrastive_bias=bias)


# --------------------------------------------------------------------------- tgdpo
#
# beta = 0.1, alpha = 0.5.
#   chosen:   d = [0.2, -0.4], rhat = [1, -1] -> coef = 0.1 (1 + 0.5 rhat) = [0.15, 0.05]
#             sum coef d = 0.03 - 0.02 = 0.01
#   rejected: d = [-0.6, 0.3, pad], rhat = [-2, 0.4] -> coef = 0.1 (1 - 0.5 rhat) = [0.2, 0.08]
#             sum coef d = -0.12 + 0.024 = -0.096
#   margin = 0.01 + 0.096 = 0.106;  L = -log sigmoid(0.106) = 0.6415510


def _tgdpo_case():
    return {
        "chosen_token_logp": t([[-1.0, -2.0]]).requires_grad_(True),
        "rejected_token_logp": t([[-1.6, -0.7, math.nan]]).requires_grad_(True),
        "ref_chosen_token_logp": t([[-1.2, -1.6]]),
        "ref_rejected_token_logp": t([[-1.0, -1.0, math.nan]]),
        "chosen_mask": torch.tensor([[True, True]]),
        "rejected_mask": torch.tensor([[True, True, False]]),
        "chosen_token_rewards": t([[1.0, -1.0]]),
        "rejected_token_rewards": t([[-2.0, 0.4, math.nan]]),
    }


def test_tgdpo_hand_computed():
    f = _tgdpo_case()
    loss, metrics = tgdpo(**f, beta=0.1, alpha=0.5)
    torch.testing.assert_close(loss, t([0.6415510235]))
    torch.testing.assert_close(metrics["reward_margin"], t([0.106]))
    torch.testing.assert_close(metrics["chosen_reward"], t([0.01]))
    torch.testing.assert_close(metrics["min_coef"], t([0.05]))
    # dL/dlogp_t = -sigmoid(-margin) * coef_t (chosen), +sigmoid(-margin) * coef_t (rejected)
    gw, gl = torch.autograd.grad(loss.sum(), (f["chosen_token_logp"], f["rejected_token_logp"]))
    s = 1 / (1 + math.exp(0.106))
    torch.testing.assert_close(gw, t([[-s * 0.15, -s * 0.05]]))
    torch.testing.assert_close(gl, t([[s * 0.2, s * 0.08, 0.0]]))


def test_tgdpo_with_zero_rewards_or_alpha_zero_is_dpo():
    f = _token_pair()
    dw, dl = _summed_margin(f)
    zero = dict(f, chosen_token_rewards=torch.zeros_like(f["chosen_token_rewards"]))
    zero["rejected_token_rewards"] = torch.zeros_like(f["rejected_token_rewards"])
    loss, _ = tgdpo(**zero, beta=0.2)
    torch.testing.assert_close(loss, _dpo(dw - dl, 0.2))
    loss, _ = tgdpo(**f, beta=0.2, alpha=0.0)
    torch.testing.assert_close(loss, _dpo(dw - dl, 0.2))


def test_tgdpo_with_constant_rewards_is_dpo_with_two_betas():
    # rhat_t = c everywhere: margin = beta (1 + alpha c) sum d_w - beta (1 - alpha c) sum d_l,
    # which is DPO only when alpha c = 0.
    f = _token_pair(seed=4)
    dw, dl = _summed_margin(f)
    c, beta, alpha = 0.7, 0.1, 0.5
    const = dict(f, chosen_token_rewards=torch.full_like(f["chosen_token_rewards"], c))
    const["rejected_token_rewards"] = torch.full_like(f["rejected_token_rewards"], c)
    loss, _ = tgdpo(**const, beta=beta, alpha=alpha)
    expected = -F.logsigmoid(beta * (1 + alpha * c) * dw - beta * (1 - alpha * c) * dl)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, _dpo(dw - dl, beta))


def test_tgdpo_padding_does_not_leak_and_rewards_get_no_gradient():
    f = _token_pair(seed=5)
    rewards = f["chosen_token_rewards"].clone().requires_grad_(True)
    loss, _ = tgdpo(**dict(f, chosen_token_rewards=rewards))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    grad = f["chosen_token_logp"].grad
    assert torch.isfinite(grad).all() and (grad[~f["chosen_mask"]] == 0).all()
    assert rewards.grad is None


def test_dpo_implicit_token_rewards():
    r = dpo_implicit_token_rewards(
        t([[-1.0, -2.0, math.nan]]), t([[-1.5, -1.0, 0.0]]), torch.tensor([[1, 1, 0]]), beta=0.1
    )
    torch.testing.assert_close(r, t([[0.05, -0.1, 0.0]]))


# --------------------------------------------------------------------------- treg
#
# beta = 0.1, alpha = 0.5.
#   chosen   d = [0.2, -0.4] (sum -0.2), rhat = [0.5, -0.5]
#   rejected d = [-0.6, 0.3] (sum -0.3), rhat = [-0.5, 0.25]
#   m = 0.1 * (-0.2 - -0.3) = 0.01;  L_DPO = -log sigmoid(0.01) = 0.6881597
#   w = sigmoid(-0.01) = 0.4975000
#   R_w = -0.1 * (0.5 * 0.2 + -0.5 * -0.4)  = -0.1 * 0.3   = -0.03
#   R_l = -0.1 * (-0.5 * -0.6 + 0.25 * 0.3) = -0.1 * 0.375 = -0.0375
#   L = 0.6881597 + 0.5 * 0.4975 * (-0.0675) = 0.6881597 - 0.0167906 = 0.6713691


def _treg_case():
    return dict(
        _tgdpo_case(),
        chosen_token_rewards=t([[0.5, -0.5]]),
        rejected_token_rewards=t([[-0.5, 0.25, math.nan]]),
    )


def test_treg_hand_computed():
    f = _treg_case()
    loss, metrics = treg(**f, beta=0.1, alpha=0.5)
    torch.testing.assert_close(loss, t([0.6713690548]))
    torch.testing.assert_close(metrics["dpo_loss"], t([0.6881596805]))
    torch.testing.assert_close(metrics["reg_loss"], t([-0.0675]))
    torch.testing.assert_close(metrics["seq_weight"], t([0.4975000208]))
    # w is detached: dL/dlogp_w,t = -beta s + alpha w (-beta rhat_t), s = sigmoid(-m) = w
    gw = torch.autograd.grad(loss.sum(), f["chosen_token_logp"])[0]
    w = 0.4975000208
    torch.testing.assert_close(gw, t([[-0.1 * w - 0.5 * w * 0.05, -0.1 * w + 0.5 * w * 0.05]]))


def test_treg_with_zero_weight_is_dpo():
    f = _token_pair(seed=6)
    dw, dl = _summed_margin(f)
    loss, metrics = treg(**f, beta=0.1, alpha=0.0)
    torch.testing.assert_close(loss, _dpo(dw - dl, 0.1))
    torch.testing.assert_close(metrics["dpo_loss"], loss.detach())
    g1 = torch.autograd.grad(loss.sum(), f["chosen_token_logp"], retain_graph=True)[0]
    g2 = torch.autograd.grad(_dpo(dw - dl, 0.1).sum(), f["chosen_token_logp"])[0]
    torch.testing.assert_close(g1, g2)
    if "dpo" in PREFERENCE_LOSSES and "beta" in PREFERENCE_LOSSES.get("dpo").params:

        def total(key, mask):
            return torch.where(f[mask], f[key], 0.0).sum(-1)

        sums = {
            "chosen_logp": total("chosen_token_logp", "chosen_mask"),
            "rejected_logp": total("rejected_token_logp", "rejected_mask"),
            "ref_chosen_logp": total("ref_chosen_token_logp", "chosen_mask"),
            "ref_rejected_logp": total("ref_rejected_token_logp", "rejected_mask"),
            "chosen_len": f["chosen_mask"].sum(-1).to(F64),
            "rejected_len": f["rejected_mask"].sum(-1).to(F64),
        }
        entry = PREFERENCE_LOSSES.get("dpo")
        if set(entry.inputs) <= set(sums):
            dpo_loss, _ = PREFERENCE_LOSSES.call("dpo", sums, {"beta": 0.1})
            torch.testing.assert_close(loss, dpo_loss)


def test_treg_regularizer_raises_positive_reward_tokens():
    # One step of gradient descent on the regularizer alone moves a token's log-prob in the
    # direction of its reward's sign (d R / d logp_t = -beta rhat_t).
    f = _treg_case()
    full, _ = treg(**f, alpha=1.0)
    dpo_only, _ = treg(**f, alpha=0.0)
    g_full = torch.autograd.grad(full.sum(), f["chosen_token_logp"])[0]
    g_dpo = torch.autograd.grad(dpo_only.sum(), f["chosen_token_logp"])[0]
    step = -(g_full - g_dpo)
    assert step[0, 0] > 0 > step[0, 1]  # rhat = +0.5, -0.5


def test_treg_padding_does_not_leak():
    f = _token_pair(seed=7)  # NaN log-probs and NaN token rewards on every padding position
    loss, _ = treg(**f, alpha=0.5)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for side in ("chosen", "rejected"):
        grad = f[f"{side}_token_logp"].grad
        assert torch.isfinite(grad).all() and (grad[~f[f"{side}_mask"]] == 0).all()


@pytest.mark.parametrize("name", ["kto", "lipo", "tgdpo", "treg"])
def test_beta_must_be_positive(name):
    with pytest.raises(ValueError, match="beta"):
        PREFERENCE_LOSSES.get(name).fn(
            **{k: torch.zeros(1, 1) for k in PREFERENCE_LOSSES.get(name).inputs}, beta=0.0
        )


def test_treg_token_rewards_are_bounded_and_zero_on_padding():
    r = treg_token_rewards(
        t([[-1.0, -5.0, -2.0, math.nan]]),
        t([[-1.0, -1.0, -30.0, -1.0]]),
        torch.tensor([[True, True, True, False]]),
    )
    # sigmoid(0) - 0.5 = 0; sigmoid(-4) - 0.5 = -0.4820138; sigmoid(28) - 0.5 ~ 0.5
    torch.testing.assert_close(r, t([[0.0, -0.4820137900, 0.5, 0.0]]))
    assert not r.requires_grad
