"""The RL reproductions (`rewardlab experiment NAME --fast`): each fast mode trains the tiny
model for a few steps through the trainer's stages, writes its table and PNG, and shows the
direction of the effect it is about (not the paper's numbers). No timing is asserted."""

from __future__ import annotations

import os
from pathlib import Path

from experiment_checks import run_fast as run_shared

from rewardlab.experiments import EXPERIMENTS, ExperimentResult

RL_EXPERIMENTS = {"unlikeliness-passk", "entropy-mechanism", "par-hacking"}
SEED = int(os.environ.get("REWARDLAB_EXPERIMENT_SEED", "0"))  # to check other seeds by hand


def run_fast(name: str, out: Path) -> ExperimentResult:
    result = run_shared(name, out, seed=SEED)
    assert sorted(p.name for p in out.iterdir()) == sorted(["result.md", f"{name}.png"])  # runs are temporary
    return result


def test_rl_experiments_are_registered() -> None:
    assert RL_EXPERIMENTS <= set(EXPERIMENTS)


def test_unlikeliness_passk(tmp_path: Path) -> None:
    data = run_fast("unlikeliness-passk", tmp_path).data
    sampled, exact, n = data["pass_sampled"], data["pass_exact"], data["n_samples"]
    # The base model reaches almost every prompt with enough samples.
    assert exact["base"][1024] > 0.95
    # GRPO sharpens: worse than the base model at large N.
    assert exact["grpo"][n] < exact["base"][n] - 0.03
    # The unlikeliness reward lifts large-N pass@N above GRPO's.
    assert exact["unlikely_grpo"][n] > exact["grpo"][n] + 0.03
    assert sampled["unlikely_grpo"][n] > sampled["grpo"][n]
    # The unbiased estimate agrees with the exact pass@N (the same events are counted).
    for method in sampled:
        for k, value in sampled[method].items():
            assert abs(value - exact[method][k]) < 0.05


def test_entropy_mechanism(tmp_path: Path) -> None:
    data = run_fast("entropy-mechanism", tmp_path).data
    bandit = data["bandit"]
    # Tabular softmax: PG's entropy change is -eta Cov(log pi, pi A), NPG's -eta Cov(log pi, A).
    assert bandit["pg_step/pg_form"] < 0.01 and bandit["npg_step/npg_form"] < 0.01
    assert bandit["pg_step/npg_form"] > 0.3 and bandit["npg_step/pg_form"] > 0.3
    # Tiny LM under GRPO: the covariance term C = Cov(log pi(y_t), A_t) stays positive ...
    assert data["positive_cov"] > 0.8
    # ... and the first-order logit form -Cov_pi(log pi, dz) tracks the measured per-step
    # entropy change. (Whether entropy falls over 20 steps, and whether Clip-Cov / KL-Cov keep
    # it up, depends on the seed at this size; the full run measures those.)
    assert data["r_linear"] > 0.5


def test_par_hacking(tmp_path: Path) -> None:
    data = run_fast("par-hacking", tmp_path).data
    start, final_gold, length = data["start"], data["final_gold"], data["final_length"]
    # Without a KL penalty the raw proxy is hacked: completions grow and gold falls ...
    assert length["raw proxy"] > start["length"] + 1.5
    assert final_gold["raw proxy"] < 0.6 * start["gold"]
    assert data["curves"]["raw proxy"][-1][1]["proxy"] > start["proxy"]
    # ... and PAR alone does not prevent it (it keeps the order of each group's rewards) ...
    assert length["par"] > start["length"] + 1
    assert final_gold["par"] < 0.6 * start["gold"]
    # ... while with RLHF's KL penalty to the SFT policy, PAR does not pad and keeps more gold.
    assert length["par + KL"] < length["par"] - 1
    assert final_gold["par + KL"] > final_gold["par"] + 0.08
    # PAR's shaped reward is bounded in (0, 1).
    assert 0.0 < data["shaped"]["par"] < 1.0
