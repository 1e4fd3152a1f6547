"""The command line as a user meets it: exit codes, one-line errors, the quickstart's bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def rewardlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(TESTS), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_list_json_names_every_axis_entry_with_its_paper() -> None:
    out = rewardlab("list", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    names = {axis: {e["name"] for e in entries} for axis, entries in data["axes"].items()}
    # every name the algorithm-zoo issue asks for
    assert {
        "grpo", "dr_grpo", "rloo", "reinforce", "reinforce_pp", "remax", "lite_ppo", "opo",
        "passk", "gae", "bnpo", "bnpo_decomposed",
    } <= names["advantage"]
    assert {
        "pg", "ppo_clip", "ppo_dual_clip", "gspo", "gmpo", "cispo", "sapo", "clip_cov", "kl_cov", "disco",
    } <= names["policy_loss"]
    assert names["kl"] == {"k1", "k2", "k3", "abs"}
    assert names["aggregation"] == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"}
    assert {"overlong_penalty", "unlikely"} <= names["reward_transform"]
    assert {"dynamic_sampling", "pf_ppo"} <= names["batch_filter"]
    assert {"top_entropy", "truncated"} <= names["token_mask"]
    assert {"tis"} <= names["correction"]
    assert all(e["paper"] for entries in data["axes"].values() for e in entries)
    assert set(data["recipes"]) >= {
        "ppo", "grpo", "dr_grpo", "dapo", "bnpo", "rloo", "reinforce_pp", "remax", "gspo", "cispo",
        "lite_ppo", "disco", "clip_cov", "kl_cov", "unlikely_grpo", "gmpo",
    }
    assert {"exact_match", "math_verify", "task"} <= {r["name"] for r in data["rewards"]}


def test_config_mistake_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  step: 3\n")
    out = rewardlab("train", str(config))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "unknown key 'train.step'" in out.stderr and "did you mean 'train.steps'" in out.stderr


def test_bad_data_row_names_file_line_and_field(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"promt": "2+2=", "answer": "4"}\n')
    out = rewardlab(
        "train", "--set", f"data.path={data}", "--set", "rewards=[{name: exact_match}]",
        "--set", f"run_dir={tmp_path / 'run'}",
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    message = " ".join(out.stderr.split())
    assert "prompts.jsonl, line 2" in message and "'promt'" in message


def test_train_eval_report_on_a_tiny_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = rewardlab(
        "train", "--set", f"run_dir={run}", "--set", "train.steps=2", "--set", "train.prompts_per_step=4",
        "--set", "rollout.num_generations=2", "--set", "data.heldout_size=8", "--set", "eval.every=0",
    )
    assert out.returncode == 0, out.stderr
    assert "before" in out.stdout and "after" in out.stdout
    evaluated = rewardlab("eval", str(run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0 and "eval/pass@4" in metrics
    report = rewardlab("report", str(run))
    assert report.returncode == 0 and "overview.png" in report.stdout


@pytest.mark.slow
def test_quickstart_meets_its_bar(tmp_path: Path) -> None:
    """The README's main job: RL after a scarce-demonstration warm start clearly helps."""
    summary = tmp_path / "summary.json"
    out = rewardlab("quickstart", "--run-dir", str(tmp_path / "qs"), "--summary-json", str(summary))
    assert out.returncode == 0, out.stderr
    result = json.loads(summary.read_text())
    assert set(result) == {"accuracy_before", "accuracy_after", "seconds", "run_dir"}
    assert result["accuracy_after"] >= result["accuracy_before"] + 0.15, result


def test_docs_algorithms_is_generated_from_the_registry() -> None:
    from rewardlab.catalogue import markdown

    page = (TESTS.parent / "docs" / "algorithms.md").read_text()
    assert page == markdown(), "regenerate: python -m rewardlab.catalogue > docs/algorithms.md"
