"""Smoke run of the side-by-side benchmark (bench/run.py): one short case, both libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One of bench/'s scripts in its own process; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_bench_runs_one_short_case_for_both_libraries(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = _run("run.py", "dpo-tiny", "--steps", "3", "--warmup", "1", "--json", str(out))
    report = json.loads(out.read_text())
    (result,) = report["results"]
    for lib in ("rewardlab", "trl"):
        assert result[lib]["steps"] == 2 and result[lib]["step_s"] > 0 and result[lib]["peak_rss_mb"] > 100
    assert result["ratio"]["step_s"] == result["rewardlab"]["step_s"] / result["trl"]["step_s"]
    assert report["machine"]["trl"] and "| dpo-tiny |" in done.stdout


def test_bench_rm_case_runs_for_both_libraries(tmp_path: Path) -> None:
    """The reward-model case: rewardlab's Bradley-Terry trainer against TRL's RewardTrainer."""
    out = tmp_path / "bench.json"
    _run("run.py", "rm-tiny", "--steps", "3", "--warmup", "1", "--json", str(out))
    (result,) = json.loads(out.read_text())["results"]
    for lib in ("rewardlab", "trl"):
        assert result[lib]["steps"] == 2 and result[lib]["step_s"] > 0


def test_profile_step_reports_the_phases_of_a_grpo_step() -> None:
    # With a reference model (the on-policy GRPO step of grpo-tiny has no old-log-prob pass).
    done = _run("profile_step.py", "grpo-tiny-kl", "--steps", "3", "--warmup", "1")
    for phase in ("generate", "backward", "optimizer", "old/ref logprobs", "peak RSS", "decode:", "matmul peak"):
        assert phase in done.stdout, done.stdout


def test_curve_case_runs_both_libraries_from_one_warm_start(tmp_path: Path) -> None:
    """curve-grpo-tiny (bench/curve.py): both libraries' curves start from the same warm start,
    scored by the same evaluation, so their step-0 accuracies are equal."""
    out = tmp_path / "curve.json"
    done = _run("curve.py", "--max-steps", "2", "--every", "1", "--sft-epochs", "1", "--json", str(out))
    (result,) = json.loads(out.read_text())["results"]
    curves = result["curves"]
    for lib in ("rewardlab", "trl"):
        assert [p["step"] for p in curves[lib]] == [0, 1, 2]
        assert 0 == curves[lib][0]["seconds"] < curves[lib][1]["seconds"] < curves[lib][2]["seconds"]
    assert curves["rewardlab"][0]["accuracy"] == curves["trl"][0]["accuracy"] == result["start"]
    assert "| 0 |" in done.stdout


def test_curve_time_to_target_is_the_first_evaluation_at_or_above_it() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from curve import time_to

    curve = [
        {"step": 0, "seconds": 0.0, "accuracy": 0.20},
        {"step": 25, "seconds": 7.0, "accuracy": 0.31},
        {"step": 50, "seconds": 14.0, "accuracy": 0.29},
        {"step": 75, "seconds": 21.0, "accuracy": 0.35},
    ]
    assert time_to(curve, 0.30) == {"step": 25, "seconds": 7.0}
    assert time_to(curve, 0.35) == {"step": 75, "seconds": 21.0}
    assert time_to(curve, 0.36) is None
