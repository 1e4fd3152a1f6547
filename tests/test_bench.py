"""Smoke run of the side-by-side benchmark (bench/run.py): one short case, both libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_runs_one_short_case_for_both_libraries(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "dpo-tiny", "--steps", "3", "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    (result,) = report["results"]
    for lib in ("rewardlab", "trl"):
        assert result[lib]["steps"] == 2 and result[lib]["step_s"] > 0 and result[lib]["peak_rss_mb"] > 100
    assert result["ratio"]["step_s"] == result["rewardlab"]["step_s"] / result["trl"]["step_s"]
    assert report["machine"]["trl"] and "| dpo-tiny |" in done.stdout


def test_bench_rm_case_runs_for_both_libraries(tmp_path: Path) -> None:
    """The reward-model case: rewardlab's Bradley-Terry trainer against TRL's RewardTrainer."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "rm-tiny", "--steps", "3", "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = json.loads(out.read_text())["results"]
    for lib in ("rewardlab", "trl"):
        assert result[lib]["steps"] == 2 and result[lib]["step_s"] > 0


def test_profile_step_reports_the_phases_of_a_grpo_step() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_step.py"), "grpo-tiny", "--steps", "3", "--warmup", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for phase in ("generate", "backward", "optimizer", "old/ref logprobs", "peak RSS", "decode:", "matmul peak"):
        assert phase in done.stdout, done.stdout
