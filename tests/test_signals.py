"""SIGINT / SIGTERM: the run finishes its step, writes a checkpoint and exits (status 130);
a second signal exits at once. The stopped run resumes to the same metrics as a run that was
never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_trainers import _rl_config

from rewardlab.checkpoint import list_checkpoints
from rewardlab.tracking import read_metrics
from rewardlab.trainers.online import train

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _start(*args: str) -> subprocess.Popen[str]:
    """``rewardlab ARGS`` in a child process (``_start("train", config)``)."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "rewardlab.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_steps(
    run_dir: Path, steps: int, process: subprocess.Popen[str], timeout: float = 300, key: str = "reward"
) -> None:
    """Until metrics.jsonl has ``steps`` training lines (lines with ``key``; or the process ended)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and sum(f'"{key}"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {steps}: {process.poll()=}")


def _config_file(tmp_path: Path, run_dir: Path, **overrides: Any) -> Path:
    config = _rl_config(run_dir, **{"train.steps": 40, "checkpoint.every": 0, **overrides})
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def _train_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if not k.startswith("time/")}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


def test_sigterm_checkpoints_then_exits_and_the_run_resumes_exactly(tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    process = _start("train", str(_config_file(tmp_path, run_dir)))
    _wait_for_steps(run_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint written; resume with --resume" in " ".join(err.split())
    (checkpoint,) = list_checkpoints(run_dir)  # only the one the signal asked for
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 3 <= stopped_at < 40

    config = _rl_config(run_dir, **{"train.steps": 40, "checkpoint.every": 0})
    resumed = train(config, resume=run_dir)
    straight = train(_rl_config(tmp_path / "straight", **{"train.steps": 40, "checkpoint.every": 0}))
    assert _train_lines(resumed.run_dir) == _train_lines(straight.run_dir)


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "twice"
    process = _start("train", str(_config_file(tmp_path, run_dir, **{"train.steps": 400})))
    _wait_for_steps(run_dir, 2, process)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGINT)  # a different signal, so the two are not merged
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted" in err


def test_sft_stops_on_sigterm_and_rewardlab_sft_resume_continues_exactly(tmp_path: Path) -> None:
    from test_trainers import _sft_config

    from rewardlab.trainers.sft import train_sft

    settings = {"train.epochs": 60, "checkpoint.every": 0, "eval.every": 0}
    run_dir = tmp_path / "stopped"
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(_sft_config(run_dir, **settings).model_dump(mode="json")))
    process = _start("sft", str(path))
    _wait_for_steps(run_dir, 3, process, key="loss")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint written; resume with --resume" in " ".join(err.split())
    (checkpoint,) = list_checkpoints(run_dir)
    assert 3 <= int(checkpoint.name.split("-")[1]) < 180

    resumed = _start("sft", "--resume", str(run_dir))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "(180 steps" in out
    straight = train_sft(_sft_config(tmp_path / "straight", **settings))
    assert _train_lines(run_dir) == _train_lines(straight.run_dir)


def test_a_preference_run_stops_on_sigterm_with_a_checkpoint(tmp_path: Path, warm_start: Path) -> None:
    from preference_setup import preference_config

    from rewardlab.errors import StopRequested
    from rewardlab.trainers.preference import train_preference

    def signal_at_step_2(step: int, metrics: dict[str, float]) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled after the step: checkpoint, then stop

    settings = {"model.name": str(warm_start), "train.epochs": 1, "checkpoint.every": 0}
    config = preference_config(tmp_path / "stopped", **settings)
    with pytest.raises(StopRequested, match="stopped at step 2; checkpoint written"):
        train_preference(config, on_step=signal_at_step_2)
    folder = Path(config.run_dir or "")
    assert [p.name for p in list_checkpoints(folder)] == ["step-000002"]
    resumed = train_preference(config, resume=folder)
    straight = train_preference(preference_config(tmp_path / "straight", **settings))
    assert list(read_metrics(resumed.run_dir / "metrics.jsonl")) == list(read_metrics(straight.run_dir / "metrics.jsonl"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


# --------------------------------------------------------------------------- non-finite steps


def _poisoned_after(step_from: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From optimizer call ``step_from`` on, every RL micro-batch loss is NaN."""
    from rewardlab.trainers import learner

    calls: list[int] = []
    original = learner.micro_batch_loss

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        loss, stats = original(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), stats) if len(calls) >= step_from else (loss, stats)

    monkeypatch.setattr(learner, "micro_batch_loss", poisoned)
    return calls


def test_sft_skips_nan_steps_then_stops_naming_the_causes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rewardlab.errors import RewardlabError
    from rewardlab.trainers import sft

    calls: list[int] = []
    original = sft.sft_loss

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss  # steps 1-2 good, then NaN

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    from test_trainers import _sft_config

    config = _sft_config(tmp_path / "run", **{"checkpoint.every": 2, "eval.every": 0, "train.optim.max_bad_steps": 3})
    with pytest.raises(RewardlabError, match=r"3 steps in a row \(the last: step 5\) had a NaN .*\(train\.optim\.lr\)"):
        sft.train_sft(config)
    lines = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r.get("skipped_nonfinite", 0.0) for r in lines] == [0.0, 0.0, 1.0, 1.0]
    # the NaN steps changed no weight: the checkpoint of step 4 holds step 2's
    from safetensors.torch import load_file

    folder = tmp_path / "run" / "checkpoints"
    two, four = (load_file(str(folder / f"step-00000{n}" / "weights.safetensors")) for n in (2, 4))
    assert all(torch.equal(two[k], four[k]) for k in two)


def test_nan_steps_are_skipped_then_the_run_stops_naming_the_causes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from rewardlab.errors import RewardlabError

    _poisoned_after(3, monkeypatch)  # steps 1-2 are good, then every loss is NaN
    config = _rl_config(tmp_path / "run", **{"train.steps": 12, "checkpoint.every": 2, "train.optim.max_bad_steps": 3})
    with pytest.raises(RewardlabError, match=r"3 steps in a row \(the last: step 5\) had a NaN .*\(train\.optim\.lr\)"):
        train(config)
    lines = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r.get("skipped_nonfinite", 0.0) for r in lines] == [0.0, 0.0, 1.0, 1.0]  # step 5 raised before logging
    # the weights saved at step 4 are those of step 2: the NaN steps changed nothing
    from safetensors.torch import load_file

    folder = tmp_path / "run" / "checkpoints"
    two = torch.load(folder / "step-000002" / "trainer.pt", weights_only=True)
    four = torch.load(folder / "step-000004" / "trainer.pt", weights_only=True)
    a = load_file(str(folder / "step-000002" / "weights.safetensors"))
    b = load_file(str(folder / "step-000004" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(b[k]).all() for k in a)
    assert two["step"] == 2 and four["step"] == 4
