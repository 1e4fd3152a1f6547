"""Process rewards: step segmentation, the credit transforms (by hand), the implicit PRM's
identities and CE loss, PRIME's advantage, and the process reward inside the RL loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainers import _Crash, _crash_at, _rl_config
from test_trainers import _train_metrics as _metrics

from rewardlab.algorithms import ADVANTAGES, CREDIT_TRANSFORMS
from rewardlab.algorithms.credit import (
    apply_credit,
    place_on_step_ends,
    step_boundaries,
    step_ids,
    step_sums,
)
from rewardlab.algorithms.implicit_prm import (
    implicit_outcome_reward,
    implicit_prm_ce_loss,
    implicit_step_rewards,
    implicit_token_rewards,
    implicit_values,
    prime_advantages,
)
from rewardlab.config import NamedChoice, RunConfig
from rewardlab.errors import ConfigError
from rewardlab.trainers.online import train

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


# --------------------------------------------------------------------------- segmentation


def test_steps_end_at_the_separator_and_at_the_last_token() -> None:
    ids = step_ids([list("ab\ncd\ne"), list("x\n")], "\n", 8)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1, 2, -1], [0, 0, -1, -1, -1, -1, -1, -1]]
    ends = step_boundaries([list("ab\ncd\ne"), list("x\n")], "\n", 8)
    assert ends.nonzero().tolist() == [[0, 2], [0, 5], [0, 6], [1, 1]]
    # a multi-character token containing the separator ends its step; "" = one step
    assert step_ids([["a", ".\n", "b"]], "\n", 3).tolist() == [[0, 0, 1]]
    assert step_ids([list("a\nb")], "", 4).tolist() == [[0, 0, 0, -1]]


def test_step_sums_and_placing_on_step_ends_round_trip() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 0, 0, -1, -1, -1]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 9.0], [1.0, 1.0, 1.0, 9.0, 9.0, 9.0]])
    sums, mask = step_sums(values, ids)
    assert sums.tolist() == [[3.0, 7.0, 5.0], [3.0, 0.0, 0.0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    placed = place_on_step_ends(sums, ids)
    assert placed.tolist() == [[0, 3, 0, 7, 5, 0], [0, 0, 3, 0, 0, 0]]


# --------------------------------------------------------------------------- credit transforms

R = torch.tensor([[0.5, -1.0, 2.0], [1.0, 3.0, 0.0]])
M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _credit(name: str, outcome: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
    outcome = outcome if outcome is not None else torch.zeros(2)
    return apply_credit(R, M, outcome, [NamedChoice(name=name, params=params)])


def test_sum_keeps_the_step_rewards() -> None:
    assert _credit("sum").tolist() == [[0.5, -1.0, 2.0], [1.0, 3.0, 0.0]]


def test_min_form_weights_by_softmax_of_minus_r_over_t() -> None:
    out = _credit("min_form", temperature=1.0)
    w = [math.exp(-0.5), math.exp(1.0), math.exp(-2.0)]
    expected0 = [wi / sum(w) * r for wi, r in zip(w, [0.5, -1.0, 2.0], strict=True)]
    w1 = [math.exp(-1.0), math.exp(-3.0)]
    expected1 = [w1[0] / sum(w1) * 1.0, w1[1] / sum(w1) * 3.0, 0.0]
    assert out.flatten().tolist() == pytest.approx(expected0 + expected1, abs=1e-6)
    # T -> 0: the first step's return (the sum) is the minimum of the step rewards
    cold = _credit("min_form", temperature=1e-3)
    assert cold.sum(-1).tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)


def test_clip_makes_step_rewards_at_most_zero() -> None:
    assert _credit("clip").tolist() == [[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
    assert _credit("clip", eta=1.5).tolist() == [[-1.0, -2.5, 0.0], [-0.5, 0.0, 0.0]]


def test_delta_telescopes_to_the_first_steps_reward() -> None:
    out = _credit("delta")
    assert out.tolist() == [[1.5, -3.0, 2.0], [-2.0, 3.0, 0.0]]
    returns = out.flip(-1).cumsum(-1).flip(-1)  # reward-to-go from each step
    assert returns.tolist() == [[0.5, -1.0, 2.0], [1.0, 3.0, 0.0]]


def test_gated_keeps_process_rewards_of_successful_outcomes_only() -> None:
    out = _credit("gated", outcome=torch.tensor([1.0, 0.0]))
    assert out.tolist() == [[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]
    out = _credit("gated", outcome=torch.tensor([0.4, 0.6]), threshold=0.5)
    assert out.tolist() == [[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]


def test_credit_transforms_compose_in_order_and_are_catalogued() -> None:
    out = apply_credit(R, M, torch.tensor([1.0, 1.0]), [NamedChoice(name="clip"), NamedChoice(name="delta")])
    assert out.tolist() == [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
    assert set(CREDIT_TRANSFORMS.names()) == {"sum", "min_form", "clip", "delta", "gated"}
    from rewardlab.catalogue import markdown

    assert "## credit" in markdown()


# --------------------------------------------------------------------------- implicit PRM


def _logps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 7, generator=g) * 3
    ref = -torch.rand(3, 7, generator=g) * 3
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]).float()
    return logp, ref, mask


def test_the_implicit_prms_step_rewards_sum_to_its_outcome_reward() -> None:
    logp, ref, mask = _logps()
    beta = 0.3
    tokens = implicit_token_rewards(logp, ref, mask, beta=beta)
    outcome = implicit_outcome_reward(logp, ref, mask, beta=beta)
    by_hand = beta * ((logp - ref) * mask).sum(-1)
    assert torch.allclose(outcome, by_hand)
    ids = step_ids([list("ab\ncd\ne"), list("x\ny\n"), list("zz")], "\n", 7)
    steps, step_mask = implicit_step_rewards(tokens, ids)
    assert step_mask.sum(-1).tolist() == [3, 2, 1]
    assert torch.allclose(steps.sum(-1), outcome, atol=1e-6)
    # the prefix values q_t end at the outcome reward, and placing the step rewards on step
    # ends gives the same values at every step end
    values = implicit_values(tokens)
    last = mask.sum(-1).long() - 1
    assert torch.allclose(values[torch.arange(3), last], outcome, atol=1e-6)
    placed = implicit_values(place_on_step_ends(steps, ids))
    ends = step_boundaries([list("ab\ncd\ne"), list("x\ny\n"), list("zz")], "\n", 7)
    assert torch.allclose(placed[ends], values[ends], atol=1e-6)


def test_implicit_prm_ce_loss_by_hand() -> None:
    logp, ref, mask = _logps()
    beta = 0.5
    labels = torch.tensor([1.0, 0.0, 1.0])
    r = [beta * float(((logp[i] - ref[i]) * mask[i]).sum()) for i in range(3)]
    by_hand = -(
        math.log(1 / (1 + math.exp(-r[0])))
        + math.log(1 - 1 / (1 + math.exp(-r[1])))
        + math.log(1 / (1 + math.exp(-r[2])))
    ) / 3
    loss = implicit_prm_ce_loss(logp, ref, mask, labels, beta=beta)
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


def test_prime_advantage_by_hand() -> None:
    # one group of two: lengths 2 and 1
    outcome = torch.tensor([1.0, 0.0])
    process = torch.tensor([[0.2, 0.4], [0.6, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    group = torch.tensor([0, 0])
    adv = prime_advantages(outcome, process, group, mask)
    # baselines: row 0 uses row 1's mean token reward 0.6; row 1 uses row 0's 0.3
    # row 0: returns of (0.2-0.6, 0.4-0.6) = (-0.6, -0.2), outcome adv 1 - 0 = 1
    # row 1: return of (0.6-0.3) = 0.3, outcome adv 0 - 1 = -1
    assert adv.flatten().tolist() == pytest.approx([0.4, 0.8, -0.7, 0.0])
    # the registered ``prime`` advantage takes the process part out of token_rewards
    token_rewards = process + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    fields = {"rewards": outcome, "token_rewards": token_rewards, "group": group, "mask": mask}
    assert torch.allclose(ADVANTAGES.call("prime", fields, {}), adv)


# --------------------------------------------------------------------------- in the loop


def _config(run_dir: Path, **overrides: Any) -> RunConfig:
    process = {
        "beta": 0.5, "lr": 0.01, "separator": "+",
        "credit": [{"name": "min_form", "params": {"temperature": 0.5}}],
    }
    defaults = {
        "train.steps": 3, "train.prompts_per_step": 4, "eval.pass_k": 1, "logging.samples": 0,
        "algorithm.advantage": {"name": "prime"}, "algorithm.process_reward": process,
    }
    return _rl_config(run_dir, **{**defaults, **overrides})


def test_process_reward_needs_an_advantage_that_reads_token_rewards(tmp_path: Path) -> None:
    with pytest.raises((ConfigError, ValueError), match="does not read per-token rewards"):
        _config(tmp_path, **{"algorithm.advantage": {"name": "grpo"}})
    with pytest.raises((ConfigError, ValueError), match="no parameter 'tau'"):
        _config(tmp_path, **{"algorithm.process_reward": {"credit": [{"name": "min_form", "params": {"tau": 1}}]}})


def test_rl_run_with_an_online_implicit_prm_logs_process_rewards(tmp_path: Path) -> None:
    steps = _metrics(train(_config(tmp_path / "run")).run_dir)[1:]
    assert len(steps) == 3
    for m in steps:
        for key in ("ce_loss", "implicit", "accuracy", "steps", "credited", "grad_norm"):
            assert math.isfinite(m[f"process_reward/{key}"])
    # the PRM starts as the reference: zero implicit reward, then it moves with its updates
    assert steps[0]["process_reward/implicit"] == 0.0
    assert steps[-1]["process_reward/implicit"] != 0.0
    assert steps[0]["process_reward/ce_loss"] == pytest.approx(math.log(2), rel=1e-5)


def test_resume_is_exact_with_the_online_prm(tmp_path: Path) -> None:
    settings = {"checkpoint.every": 1, "algorithm.advantage": {"name": "gae"}}
    straight = train(_config(tmp_path / "straight", **settings))
    interrupted = _config(tmp_path / "interrupted", **settings)
    with pytest.raises(_Crash):
        train(interrupted, on_step=_crash_at(3))
    resumed = train(interrupted, resume=tmp_path / "interrupted")
    assert _metrics(resumed.run_dir) == _metrics(straight.run_dir)
