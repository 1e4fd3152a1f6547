"""Online / iterative / Nash preference losses (xpo, selm, sppo, inpo, nash_md): hand-computed
cases (arithmetic in the comments), limits and properties, and the batch contract.

None of these is in the installed TRL 1.16 (XPO and Nash-MD live in TRL main's
``trl/experimental``, only inline in trainers), so TRL's formulas are reproduced by hand below
where noted, from ``XPOTrainer._compute_losses`` and ``NashMDTrainer._compute_losses``.

Notation: r = logp - ref_logp, h = r_w - r_l, l(z) = -log sigmoid(z);
    l(1) = log(1 + e^-1) = 0.31326168751822286,  sigmoid(-1) = 0.2689414213699951.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rewardlab.algorithms  # noqa: F401  (registers every entry)
from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES

F64 = torch.float64
L1 = math.log1p(math.exp(-1.0))  # l(1)
S1 = 1.0 / (1.0 + math.e)  # sigmoid(-1)

INPUTS = {
    "xpo": ("chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
    + ("chosen_from_reference", "rejected_from_reference"),
    "selm": ("chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp"),
    "sppo": ("logp", "ref_logp", "win_rate"),
    "inpo": ("chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
    + ("anchor_chosen_logp", "anchor_rejected_logp"),
    "nash_md": ("logp", "ref_logp", "preference"),
}
WITH_GRAD = {"chosen_logp", "rejected_logp", "logp"}


def t(values, dtype=F64):
    return torch.atleast_1d(torch.tensor(values, dtype=dtype))


def leaf(values, dtype=F64):
    return t(values, dtype).requires_grad_(True)


def call(name, batch, **params):
    return PREFERENCE_LOSSES.call(name, batch, params)


def grad(loss, x):
    return torch.autograd.grad(loss.sum(), x, retain_graph=True)[0]


def random_fields(name, b=6, seed=0, dtype=F64):
    """Every field ``name`` reads, random; the policy log-probs are leaves with grad."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in INPUTS[name]:
        if key.endswith("_from_reference"):
            out[key] = torch.rand(b, generator=gen) < 0.5
        elif key in ("win_rate", "preference"):
            out[key] = torch.rand(b, generator=gen, dtype=dtype)
        else:
            out[key] = -10.0 * torch.rand(b, generator=gen, dtype=dtype) - 0.1
    for key in WITH_GRAD & out.keys():
        out[key].requires_grad_(True)
    return out


def pair(chosen, rejected, ref_chosen, ref_rejected):
    return {
        "chosen_logp": leaf(chosen),
        "rejected_logp": leaf(rejected),
        "ref_chosen_logp": t(ref_chosen),
        "ref_rejected_logp": t(ref_rejected),
    }


# --------------------------------------------------------------------------- contract


def test_registered_with_paper_formula_and_exact_inputs():
    for name, inputs in INPUTS.items():
        entry = PREFERENCE_LOSSES.get(name)
        assert entry.paper and entry.arxiv and entry.formula, name
        assert entry.inputs == inputs, name
    assert PREFERENCE_LOSSES.get("xpo").params == {"beta": 0.1, "alpha": 1e-5}
    assert PREFERENCE_LOSSES.get("selm").params == {"beta": 0.1, "alpha": 0.001}
    assert PREFERENCE_LOSSES.get("sppo").params == {"eta": 1000.0}
    inpo_params = PREFERENCE_LOSSES.get("inpo").params
    assert inpo_params["eta"] * inpo_params["tau"] == pytest.approx(1 / 3)
    assert PREFERENCE_LOSSES.get("nash_md").params == {"beta": 0.1}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_contract_shapes_grads_and_no_cross_row_coupling(name, dtype):
    batch = random_fields(name, dtype=dtype)
    loss, metrics = call(name, batch)
    assert loss.shape == (6,) and loss.dtype == dtype and torch.isfinite(loss).all()
    for key, value in metrics.items():
        assert value.shape == (6,) and not value.requires_grad, key
        assert torch.isfinite(value).all(), key
    leaves = [batch[k] for k in INPUTS[name] if k in WITH_GRAD]
    for g in torch.autograd.grad(loss.sum(), leaves):
        assert torch.isfinite(g).all()
    head = {k: v[:2].detach().requires_grad_(v.requires_grad) for k, v in batch.items()}
    torch.testing.assert_close(call(name, head)[0], loss[:2].detach(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, params",
    [
        ("xpo", {"beta": 0.0}),
        ("xpo", {"alpha": -1.0}),
        ("selm", {"beta": -0.1}),
        ("selm", {"alpha": -1.0}),
        ("sppo", {"eta": 0.0}),
        ("inpo", {"eta": 0.0}),
        ("inpo", {"tau": -0.1}),
        ("inpo", {"eta": 10.0, "tau": 0.2}),  # eta * tau = 2 > 1
        ("nash_md", {"beta": 0.0}),
    ],
)
def test_bad_hyperparameters_raise(name, params):
    with pytest.raises(ValueError):
        call(name, random_fields(name), **params)


# --------------------------------------------------------------------------- xpo
#
# beta 0.5, row fields (-10, -12 | ref -11, -11): h = 2, beta h = 1 -> DPO l(1) on every row.
# alpha 0.1; flags (chosen, rejected) from reference:
#   (F, T): + 0.1 * -12          = -1.2  -> l(1) - 1.2
#   (T, T): + 0.1 * (-10 + -12)  = -2.2  -> l(1) - 2.2
#   (F, F): + 0                          -> l(1)
# dL/dlogp_w = -beta sigmoid(-1) + alpha [w ~ pi_ref];  dL/dlogp_l = +beta sigmoid(-1) + alpha [...]


def _xpo_case():
    batch = pair([-10.0] * 3, [-12.0] * 3, [-11.0] * 3, [-11.0] * 3)
    batch["chosen_from_reference"] = torch.tensor([False, True, False])
    batch["rejected_from_reference"] = torch.tensor([True, True, False])
    return batch


def test_xpo_hand_computed():
    batch = _xpo_case()
    loss, metrics = call("xpo", batch, beta=0.5, alpha=0.1)
    torch.testing.assert_close(loss, t([L1 - 1.2, L1 - 2.2, L1]))
    torch.testing.assert_close(metrics["exploration_term"], t([-1.2, -2.2, 0.0]))
    torch.testing.assert_close(metrics["dpo_loss"], t([L1] * 3))
    torch.testing.assert_close(metrics["reward_margin"], t([1.0] * 3))
    g_w = grad(loss, batch["chosen_logp"])
    g_l = grad(loss, batch["rejected_logp"])
    torch.testing.assert_close(g_w, t([-0.5 * S1, -0.5 * S1 + 0.1, -0.5 * S1]))
    torch.testing.assert_close(g_l, t([0.5 * S1 + 0.1, 0.5 * S1 + 0.1, 0.5 * S1]))


def test_xpo_alpha_zero_is_dpo_and_the_bonus_gradient_is_alpha_on_reference_sides():
    batch = random_fields("xpo", b=8, seed=3)
    dpo_loss, dpo_metrics = call("dpo", batch, beta=0.2)
    loss, metrics = call("xpo", batch, beta=0.2, alpha=0.0)
    torch.testing.assert_close(loss, dpo_loss, rtol=0, atol=0)
    torch.testing.assert_close(metrics["reward_margin"], dpo_metrics["reward_margin"])
    loss, _ = call("xpo", batch, beta=0.2, alpha=0.3)
    for side in ("chosen", "rejected"):
        extra = grad(loss, batch[f"{side}_logp"]) - grad(dpo_loss, batch[f"{side}_logp"])
        torch.testing.assert_close(extra, 0.3 * batch[f"{side}_from_reference"].to(F64))


def test_xpo_matches_trl_formula_by_hand():
    # TRL XPOTrainer._compute_losses (TRL main, not in TRL 1.16), written out here: y_m from the
    # policy, y_r from the reference; chosen_mask = "the policy sample won";
    #   chosen = where(mask, m, r), rejected = where(~mask, m, r)   (log-probs and ref log-probs)
    #   loss = -logsigmoid(beta * (chosen_lr - rejected_lr)) + alpha * logp_policy(y_r)
    gen = torch.Generator().manual_seed(5)
    b, beta, alpha = 6, 0.3, 0.05
    m_logp, r_logp = (-8 * torch.rand(b, generator=gen, dtype=F64) for _ in range(2))
    m_ref, r_ref = (-8 * torch.rand(b, generator=gen, dtype=F64) for _ in range(2))
    mask = torch.tensor([True, False, True, True, False, False])
    m_logp.requires_grad_(True)
    r_logp.requires_grad_(True)

    chosen_lr = torch.where(mask, m_logp, r_logp) - torch.where(mask, m_ref, r_ref)
    rejected_lr = torch.where(~mask, m_logp, r_logp) - torch.where(~mask, m_ref, r_ref)
    trl_loss = -F.logsigmoid(beta * (chosen_lr - rejected_lr)) + alpha * r_logp

    ours, _ = call(
        "xpo",
        {
            "chosen_logp": torch.where(mask, m_logp, r_logp),
            "rejected_logp": torch.where(~mask, m_logp, r_logp),
            "ref_chosen_logp": torch.where(mask, m_ref, r_ref),
            "ref_rejected_logp": torch.where(~mask, m_ref, r_ref),
            "chosen_from_reference": ~mask,
            "rejected_from_reference": mask,
        },
        beta=beta,
        alpha=alpha,
    )
    torch.testing.assert_close(ours, trl_loss)
    for x in (m_logp, r_logp):
        torch.testing.assert_close(grad(ours, x), grad(trl_loss, x))


# --------------------------------------------------------------------------- selm
#
# beta 0.5, alpha 0.2; fields (-10, -12 | ref -12, -12): r_w = 2, r_l = 0, h = 2 -> l(1)
#   optimism = alpha beta (r_w + r_l) / 2 = 0.2 * 0.5 * 1 = 0.1  -> L = l(1) + 0.1
#   dL/dlogp_w = -0.5 sigmoid(-1) + 0.05;  dL/dlogp_l = +0.5 sigmoid(-1) + 0.05


def test_selm_hand_computed():
    batch = pair([-10.0], [-12.0], [-12.0], [-12.0])
    loss, metrics = call("selm", batch, beta=0.5, alpha=0.2)
    torch.testing.assert_close(loss, t([L1 + 0.1]))
    torch.testing.assert_close(metrics["optimism_term"], t([0.1]))
    torch.testing.assert_close(metrics["chosen_reward"], t([1.0]))
    torch.testing.assert_close(grad(loss, batch["chosen_logp"]), t([-0.5 * S1 + 0.05]))
    torch.testing.assert_close(grad(loss, batch["rejected_logp"]), t([0.5 * S1 + 0.05]))


def test_selm_alpha_zero_is_dpo():
    batch = random_fields("selm", b=8, seed=4)
    loss, _ = call("selm", batch, beta=0.25, alpha=0.0)
    torch.testing.assert_close(loss, call("dpo", batch, beta=0.25)[0], rtol=0, atol=0)


def test_selm_optimism_gradient_is_minus_alpha_beta_grad_kl_ref_to_policy():
    # Both completions drawn from pi_ref (the iterative setting): the expected gradient of the
    # optimism part, over y_w, y_l ~ pi_ref independently, is alpha beta E_ref[grad log pi]
    # = -alpha beta grad KL(pi_ref || pi). Checked exactly on a 4-response categorical policy.
    gen = torch.Generator().manual_seed(7)
    theta = torch.randn(4, generator=gen, dtype=F64, requires_grad=True)
    ref = torch.softmax(torch.randn(4, generator=gen, dtype=F64), -1)
    beta, alpha = 0.3, 0.5
    log_pi = torch.log_softmax(theta, -1)
    yw, yl = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    yw, yl = yw.flatten(), yl.flatten()
    batch = {
        "chosen_logp": log_pi[yw],
        "rejected_logp": log_pi[yl],
        "ref_chosen_logp": ref.log()[yw],
        "ref_rejected_logp": ref.log()[yl],
    }
    optimism = call("selm", batch, beta=beta, alpha=alpha)[0] - call("dpo", batch, beta=beta)[0]
    expected = (ref[yw] * ref[yl] * optimism).sum()
    kl_ref_pi = (ref * (ref.log() - torch.log_softmax(theta, -1))).sum()
    (g_ours,) = torch.autograd.grad(expected, theta)
    (g_kl,) = torch.autograd.grad(kl_ref_pi, theta)
    torch.testing.assert_close(g_ours, -alpha * beta * g_kl)


# --------------------------------------------------------------------------- sppo
#
# r = -5 - -6 = 1 on every row.
#   eta 4, w 0.75: target 4 * 0.25 = 1  -> L = 0,         dL/dlogp = 2 (r - target) = 0
#   eta 4, w 0.5:  target 0             -> L = 1,         grad 2
#   eta 2, w 0:    target -1            -> L = (1+1)^2=4, grad 4


def test_sppo_hand_computed():
    logp = leaf([-5.0, -5.0])
    batch = {"logp": logp, "ref_logp": t([-6.0, -6.0]), "win_rate": t([0.75, 0.5])}
    loss, metrics = call("sppo", batch, eta=4.0)
    torch.testing.assert_close(loss, t([0.0, 1.0]))
    torch.testing.assert_close(metrics["target"], t([1.0, 0.0]))
    torch.testing.assert_close(metrics["log_ratio"], t([1.0, 1.0]))
    torch.testing.assert_close(grad(loss, logp), t([0.0, 2.0]))
    batch = {"logp": leaf([-5.0]), "ref_logp": t([-6.0]), "win_rate": t([0.0])}
    loss = call("sppo", batch, eta=2.0)[0]
    torch.testing.assert_close(loss, t([4.0]))
    torch.testing.assert_close(grad(loss, batch["logp"]), t([4.0]))


def test_sppo_zero_loss_and_gradient_at_the_target():
    gen = torch.Generator().manual_seed(8)
    eta = 50.0
    ref = -20 * torch.rand(6, generator=gen, dtype=F64)
    w = torch.rand(6, generator=gen, dtype=F64)
    logp = (ref + eta * (w - 0.5)).requires_grad_(True)
    loss = call("sppo", {"logp": logp, "ref_logp": ref, "win_rate": w}, eta=eta)[0]
    torch.testing.assert_close(loss, torch.zeros(6, dtype=F64), rtol=0, atol=1e-20)
    torch.testing.assert_close(grad(loss, logp), torch.zeros(6, dtype=F64), rtol=0, atol=1e-12)
    shifted = call("sppo", {"logp": logp + 1.0, "ref_logp": ref, "win_rate": w}, eta=eta)[0]
    torch.testing.assert_close(grad(shifted, logp), torch.full((6,), 2.0, dtype=F64))


def test_sppo_hard_labels_sum_to_sppo_hard_and_to_twice_the_authors_pair_loss():
    # chosen row with w = 1, rejected row with w = 0: targets +-eta/2 = +-1/(2 beta), beta = 1/eta
    eta = 4.0
    batch = random_fields("selm", b=5, seed=9)
    rows = {
        "logp": torch.cat([batch["chosen_logp"], batch["rejected_logp"]]),
        "ref_logp": torch.cat([batch["ref_chosen_logp"], batch["ref_rejected_logp"]]),
        "win_rate": torch.cat([torch.ones(5, dtype=F64), torch.zeros(5, dtype=F64)]),
    }
    loss = call("sppo", rows, eta=eta)[0]
    per_pair = loss[:5] + loss[5:]
    torch.testing.assert_close(per_pair, call("sppo_hard", batch, beta=1.0 / eta)[0])
    # uclaml/SPPO sppo/trainer.py, loss_type "sppo", by hand: (loss_w + loss_l) / 2 with
    # (logratio - (1/beta) (P - 0.5))^2, here beta = 1/eta and P_w = 0.8, P_l = 0.3
    p_w, p_l = 0.8, 0.3
    rows["win_rate"] = torch.cat([torch.full((5,), p_w), torch.full((5,), p_l)]).to(F64)
    loss = call("sppo", rows, eta=eta)[0]
    r_w = batch["chosen_logp"] - batch["ref_chosen_logp"]
    r_l = batch["rejected_logp"] - batch["ref_rejected_logp"]
    authors = ((r_w - eta * (p_w - 0.5)) ** 2 + (r_l - eta * (p_l - 0.5)) ** 2) / 2
    torch.testing.assert_close((loss[:5] + loss[5:]) / 2, authors)


# --------------------------------------------------------------------------- inpo
#
# eta 2, tau 0.25 -> eta tau = 0.5.  w: logp -10, ref -11, anchor -13 -> a_w = -12, r_w = 2
#                                    l: logp -12, ref -11, anchor -9  -> a_l = -10, r_l = -2
# h = 4, target eta/2 = 1: L = 9; dL/dlogp_w = 2 (h - 1) = 6, dL/dlogp_l = -6
# rewards r / eta: 1, -1, margin 2 (its target is 1/2)


def _inpo_case():
    batch = pair([-10.0], [-12.0], [-11.0], [-11.0])
    batch["anchor_chosen_logp"] = t([-13.0])
    batch["anchor_rejected_logp"] = t([-9.0])
    return batch


def test_inpo_hand_computed():
    batch = _inpo_case()
    loss, metrics = call("inpo", batch, eta=2.0, tau=0.25)
    torch.testing.assert_close(loss, t([9.0]))
    torch.testing.assert_close(metrics["inpo_margin"], t([4.0]))
    torch.testing.assert_close(metrics["chosen_reward"], t([1.0]))
    torch.testing.assert_close(metrics["reward_margin"], t([2.0]))
    torch.testing.assert_close(grad(loss, batch["chosen_logp"]), t([6.0]))
    torch.testing.assert_close(grad(loss, batch["rejected_logp"]), t([-6.0]))


def _ipo_seq(batch, eta, ref_chosen, ref_rejected):
    fields = dict(batch, ref_chosen_logp=ref_chosen, ref_rejected_logp=ref_rejected)
    fields["chosen_len"] = fields["rejected_len"] = torch.ones_like(ref_chosen)
    return call("ipo", fields, beta=1.0 / eta, length_normalize=False)[0]


def test_inpo_limits_reduce_to_sequence_level_ipo():
    batch = random_fields("inpo", b=8, seed=10)
    eta = 5.0
    ref = (batch["ref_chosen_logp"], batch["ref_rejected_logp"])
    anchor = (batch["anchor_chosen_logp"], batch["anchor_rejected_logp"])
    # pi_t = pi_ref: IPO on the reference, for any tau
    same = dict(batch, anchor_chosen_logp=ref[0], anchor_rejected_logp=ref[1])
    loss = call("inpo", same, eta=eta, tau=0.07)[0]
    expected = _ipo_seq(batch, eta, *ref)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        grad(loss, batch["chosen_logp"]), grad(expected, batch["chosen_logp"])
    )
    # tau = 0: anchored at pi_t only; eta tau = 1: anchored at pi_ref only
    torch.testing.assert_close(
        call("inpo", batch, eta=eta, tau=0.0)[0], _ipo_seq(batch, eta, *anchor)
    )
    torch.testing.assert_close(
        call("inpo", batch, eta=eta, tau=1.0 / eta)[0], _ipo_seq(batch, eta, *ref)
    )
    # in between, it is neither
    mixed = call("inpo", batch, eta=eta, tau=0.1)[0]
    assert not torch.allclose(mixed, _ipo_seq(batch, eta, *anchor))
    assert not torch.allclose(mixed, _ipo_seq(batch, eta, *ref))


def test_inpo_gradient_vanishes_at_half_eta():
    eta, tau = 3.0, 0.1  # eta tau = 0.3: anchor a = 0.3 * ref + 0.7 * pi_t
    batch = _inpo_case()
    a_w = 0.3 * -11.0 + 0.7 * -13.0
    a_l = 0.3 * -11.0 + 0.7 * -9.0
    chosen = leaf([a_w + eta / 2 + (-12.0 - a_l), a_w + eta / 2 + 1.0 + (-12.0 - a_l)])
    batch = {k: v.expand(2).clone() for k, v in batch.items() if k != "chosen_logp"}
    batch["rejected_logp"].requires_grad_(True)
    batch["chosen_logp"] = chosen
    loss, metrics = call("inpo", batch, eta=eta, tau=tau)
    torch.testing.assert_close(metrics["inpo_margin"], t([eta / 2, eta / 2 + 1.0]))
    g = grad(loss, chosen)
    assert abs(float(g[0])) < 1e-12 and float(g[1]) == pytest.approx(2.0)


# --------------------------------------------------------------------------- nash_md
#
# logp -2, ref -3 (kl 1), p 0.9, beta 0.1:
#   L = beta kl logp - (p - 1/2) logp = 0.1 * -2 - 0.4 * -2 = -0.2 + 0.8 = 0.6
#   dL/dlogp = -(p - 1/2) + beta kl = -0.4 + 0.1 = -0.3 = -advantage


def test_nash_md_hand_computed():
    logp = leaf([-2.0])
    loss, metrics = call(
        "nash_md", {"logp": logp, "ref_logp": t([-3.0]), "preference": t([0.9])}, beta=0.1
    )
    torch.testing.assert_close(loss, t([0.6]))
    torch.testing.assert_close(grad(loss, logp), t([-0.3]))
    torch.testing.assert_close(metrics["kl"], t([1.0]))
    torch.testing.assert_close(metrics["advantage"], t([0.3]))


def test_nash_md_gradient_is_minus_preference_advantage_plus_beta_log_ratio():
    batch = random_fields("nash_md", b=10, seed=11)
    beta = 0.37
    loss, metrics = call("nash_md", batch, beta=beta)
    expected = -(batch["preference"] - 0.5) + beta * (batch["logp"] - batch["ref_logp"]).detach()
    g = grad(loss, batch["logp"])
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(g, -metrics["advantage"])


def test_nash_md_expected_gradient_is_grad_of_kl_regularized_preference():
    # Exact expectation over y ~ pi on a 5-response categorical policy, with a fixed P(y beats
    # y') per response: E_pi[grad surrogate] = grad(beta KL(pi || pi_ref) - E_pi[p]); the 1/2
    # baseline and the detached log-ratio add nothing in expectation.
    gen = torch.Generator().manual_seed(12)
    theta = torch.randn(5, generator=gen, dtype=F64, requires_grad=True)
    ref_log = torch.log_softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    p = torch.rand(5, generator=gen, dtype=F64)
    beta = 0.4
    log_pi = torch.log_softmax(theta, -1)
    rows = call("nash_md", {"logp": log_pi, "ref_logp": ref_log, "preference": p}, beta=beta)[0]
    (g_ours,) = torch.autograd.grad((log_pi.exp().detach() * rows).sum(), theta)
    pi = torch.softmax(theta, -1)
    objective = beta * (pi * (torch.log_softmax(theta, -1) - ref_log)).sum() - (pi * p).sum()
    (g_true,) = torch.autograd.grad(objective, theta)
    torch.testing.assert_close(g_ours, g_true)


def _trl_nash_md(token_logp, token_ref, probability, beta):
    # TRL NashMDTrainer._compute_losses (TRL main, not in TRL 1.16), written out here:
    #   score = (probability - 0.5) * logp.sum(1); log_ratio = sg(logp - ref) per token
    #   loss = beta * (log_ratio * logp).sum(1) - score
    score = (probability - 0.5) * token_logp.sum(1)
    log_ratio = (token_logp - token_ref).detach()
    return beta * (log_ratio * token_logp).sum(1) - score


def test_nash_md_matches_trl_per_token_form_for_one_token_completions_only():
    gen = torch.Generator().manual_seed(13)
    beta = 0.2
    p = torch.rand(4, generator=gen, dtype=F64)
    for n_tokens, same in ((1, True), (3, False)):
        tok = (-3 * torch.rand(4, n_tokens, generator=gen, dtype=F64)).requires_grad_(True)
        tok_ref = -3 * torch.rand(4, n_tokens, generator=gen, dtype=F64)
        trl = _trl_nash_md(tok, tok_ref, p, beta)
        ours = call(
            "nash_md",
            {"logp": tok.sum(1), "ref_logp": tok_ref.sum(1), "preference": p},
            beta=beta,
        )[0]
        g_trl, g_ours = grad(trl, tok), grad(ours, tok)
        if same:
            torch.testing.assert_close(ours, trl)
            torch.testing.assert_close(g_ours, g_trl)
        else:
            # sequence-level weight sum_t r_t on every token vs TRL's own-token r_t
            assert not torch.allclose(g_ours, g_trl)
            seq_kl = (tok - tok_ref).detach().sum(1, keepdim=True)
            torch.testing.assert_close(g_ours, (-(p - 0.5)[:, None] + beta * seq_kl).expand(-1, 3))
