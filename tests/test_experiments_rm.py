"""Reward-model reproductions (`rewardlab experiment`): ensemble-overoptimization, prm-credit and
xpo-exploration. Each fast mode runs, writes its table and PNG, and shows the direction of the
effect it is about (not the papers' numbers)."""

from __future__ import annotations

import math
from pathlib import Path

from experiment_checks import run_fast

from rewardlab.experiments import EXPERIMENTS


def test_registered() -> None:
    for name in ("ensemble-overoptimization", "prm-credit", "xpo-exploration"):
        assert name in EXPERIMENTS


def test_ensemble_overoptimization(tmp_path: Path) -> None:
    data = run_fast("ensemble-overoptimization", tmp_path).data
    s = data["summary"]
    single, wco, uwo = s["single"], s["WCO (min)"], s["UWO (coef 1)"]
    # A single proxy overoptimizes: its gold falls well below its own peak by n_max ...
    assert single["drop"] > 0.25 * single["peak"]
    # ... while the proxy score of what it picks keeps rising.
    proxy = data["noisy"]["proxy_single"]
    assert proxy[-1] > proxy[len(proxy) // 2] > proxy[0]
    # Conservative aggregations barely fall from their peak and beat the single RM at n_max.
    for stat in (wco, uwo):
        assert stat["drop"] < 0.2 * stat["peak"]
        assert stat["final"] > single["final"] + 0.3
    # KL of best-of-n is the analytic log n - (n-1)/n.
    assert data["kl"][0] == 0.0
    n = data["ns"][-1]
    assert math.isclose(data["kl"][-1], math.log(n) - (n - 1) / n)
    # RL without a KL penalty: the single RM's gold ends well below WCO's and UWO's.
    rl = data["rl"]
    for agg in ("WCO (min)", "UWO (coef 1)"):
        assert rl["single|0"]["final"] < rl[f"{agg}|0"]["final"] - 0.5


def test_prm_credit(tmp_path: Path) -> None:
    data = run_fast("prm-credit", tmp_path).data
    res = data["results"]
    base = res["prime|verifier|-"]
    for est in ("prime", "gae"):
        padded = res[f"{est}|verifier+PRM|sum"]
        # Sum-form credit: the policy writes many more steps and its outcome does not improve.
        assert padded["steps"] > 2 * base["steps"]
        assert padded["success"] < res[f"{est}|verifier|-"]["success"] - 0.1
        assert padded["process"] > 2 * res[f"{est}|verifier+PRM|min_form"]["process"]
    # Min-form credit with PURE's estimator, and Clip / Delta with a critic, do not pad.
    for key in ("prime|verifier+PRM|min_form", "prime|PRM only|min_form", "gae|verifier+PRM|clip",
                "gae|verifier+PRM|delta"):
        assert res[key]["steps"] < base["steps"] + 1.0, key
        assert res[key]["success"] > base["success"] - 0.05, key
    # The objective each credit defines: the sum grows with the number of steps, min-form does not.
    inc = data["incentive"]
    assert inc["sum"][12] > inc["sum"][3] + 5
    assert inc["min_form"][12] <= inc["min_form"][2] + 0.05
    assert inc["delta"][12] <= inc["delta"][2] + 0.05


def test_xpo_exploration(tmp_path: Path) -> None:
    data = run_fast("xpo-exploration", tmp_path).data
    poor = data["poor"]
    xpo, dpo = poor["XPO alpha 0.01"], poor["online DPO"]
    # Poor coverage: XPO reaches pi(y*) >= 0.5 in more runs than online DPO, which locks in.
    assert xpo["reached"] > dpo["reached"]
    assert xpo["final_reward"] > dpo["final_reward"] + 0.5
    assert data["optimum_mass"]["poor"] > 0.9  # the regularized optimum really is y*
    # Good coverage: XPO still gets there.
    assert data["good"]["XPO alpha 0.01"]["reached"] == data["good"]["XPO alpha 0.01"]["runs"]
