"""Faults during a run: ``kill -9`` at a random step and in the middle of generation, of an
optimizer step and of a checkpoint write; a full disk while writing a checkpoint or the
metrics; reward sources that raise, hang, return the wrong count, NaN or None.

The killed and disk-full runs are ``rewardlab train`` subprocesses started through ``_CHILD``,
which puts the fault in place (``REWARDLAB_TEST_FAULT``) before the CLI imports the trainer;
the library has no test hooks. Each then resumes to the metrics of a run never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_trainers import _rl_config

from rewardlab.checkpoint import CHECKPOINTS, TRAINER_STATE, WEIGHTS, list_checkpoints
from rewardlab.errors import RewardlabError
from rewardlab.rewards import RewardSource, drain_failure_counts, score_completions
from rewardlab.tracking import read_metrics
from rewardlab.trainers.online import train

TESTS = Path(__file__).parent
STEPS = 8
SETTINGS: dict[str, Any] = {
    "train.steps": STEPS,
    "train.prompts_per_step": 4,
    "checkpoint.every": 2,
    "eval.every": 4,
}
FAULT_SEED = int(os.environ.get("REWARDLAB_FAULT_SEED", "20250611"))  # the random step's seed

# Runs in the child as `python -c _CHILD train CONFIG`: installs one fault, then the CLI.
# what: step (after step `at` is logged) | generate (inside the `at`-th generate call, after
# its first forward) | optimizer (inside the `at`-th optimizer step, after the update) |
# checkpoint (the `at`-th checkpoint save, after its weights file) | metrics (the metrics
# line of step `at`). action: kill (SIGKILL) | full (from there on, files may not grow past
# `limit` bytes: RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG).
_CHILD = r"""
import json, os, resource, signal, sys
fault = json.loads(os.environ["REWARDLAB_TEST_FAULT"])
assert "rewardlab.trainers.online" not in sys.modules  # patched below before it imports them
calls = [0]

def nth_call():
    calls[0] += 1
    return calls[0] == fault["at"]

def act(limit=None):
    if fault["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

what = fault["what"]
if what == "step":
    from rewardlab.trainers import common
    log_metrics = common.log_metrics
    def logged_then_fault(sinks, step, metrics, on_step):
        log_metrics(sinks, step, metrics, on_step)
        if step == fault["at"]:
            act()
    common.log_metrics = logged_then_fault
elif what == "generate":
    from rewardlab.rollout import hf
    generate = hf.generate
    def generate_with_fault(model, *args, **kwargs):
        if nth_call():
            forward, forwards = model.forward, [0]
            def counted(*a, **k):
                forwards[0] += 1
                if forwards[0] == 2:  # the first token is out, the second on its way
                    act()
                return forward(*a, **k)
            model.forward = counted
        return generate(model, *args, **kwargs)
    hf.generate = generate_with_fault
elif what == "optimizer":
    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: nth_call() and act())
elif what == "checkpoint":
    from rewardlab import checkpoint
    save_file = checkpoint.save_file
    def save_with_fault(tensors, path):
        if nth_call() and fault["action"] == "kill":
            save_file(tensors, path)
            act()
        elif calls[0] == fault["at"]:  # full: sized from the last checkpoint's files
            (last,) = checkpoint.list_checkpoints(checkpoint.Path(path).parents[2])[-1:]
            weights = (last / checkpoint.WEIGHTS).stat().st_size
            state = (last / checkpoint.TRAINER_STATE).stat().st_size
            act(weights // 2 if fault["fails"] == checkpoint.WEIGHTS else (weights + state) // 2)
        save_file(tensors, path)
    checkpoint.save_file = save_with_fault
elif what == "metrics":
    from rewardlab.tracking.sinks import JsonlSink
    log = JsonlSink.log
    def log_with_fault(self, step, metrics):
        if step == fault["at"]:
            act(self.path.stat().st_size + 10)  # 10 bytes of the line fit: a torn line
        log(self, step, metrics)
    JsonlSink.log = log_with_fault
else:
    raise SystemExit(f"unknown fault {what!r}")

from rewardlab.cli import main
sys.argv = ["rewardlab", *sys.argv[1:]]
main()
"""


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _config(run_dir: Path) -> Any:
    return _rl_config(run_dir, **SETTINGS)


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without wall-clock timings."""
    return [
        {k: v for k, v in r.items() if not k.startswith("time/")}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The metrics of the run never interrupted (every faulty run must end with these)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(_config(run_dir))
    lines = _lines(run_dir)
    assert [r["step"] for r in lines if "reward" in r] == list(range(1, STEPS + 1))
    assert "eval/accuracy" in lines[-1]  # the final step's eval is compared too
    return lines


def _run_with_fault(tmp_path: Path, **fault: Any) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path / "run"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(run_dir).model_dump(mode="json")))
    env = dict(
        os.environ,
        PYTHONPATH=str(TESTS),
        COLUMNS="400",
        OMP_NUM_THREADS="1",
        REWARDLAB_TEST_FAULT=json.dumps(fault),
    )
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "train", str(config_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    return run_dir, done


def _partial_folders(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / CHECKPOINTS).iterdir() if not p.name.startswith("step-"))


def _steps_logged(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]


def _resume_matches(run_dir: Path, straight: list[dict[str, Any]]) -> None:
    train(_config(run_dir), resume=run_dir)
    assert _lines(run_dir) == straight
    assert _partial_folders(run_dir) == []  # what the crash left is gone
    assert (run_dir / "final" / "config.json").is_file()


# --------------------------------------------------------------------------- kill -9


_RANDOM_STEP = random.Random(FAULT_SEED).randint(3, STEPS - 1)  # after the first checkpoint

# (what, at, the checkpoints left after the kill)
_KILLS = {
    # after step N is logged (before that step's checkpoint, when one is due)
    "random_step": ("step", _RANDOM_STEP, [f"step-{s:06d}" for s in range(2, _RANDOM_STEP, 2)][-2:]),  # keep: 2
    # generate calls: the step-0 evaluation makes 2, then one per step: the 6th is step 4's
    "generation": ("generate", 6, ["step-000002"]),
    # one optimizer step per training step: the 5th is step 5's, after step-4 was saved
    "optimizer_step": ("optimizer", 5, ["step-000002", "step-000004"]),
    # the 2nd save (step 4): its weights are written in .tmp-*, the trainer state is not
    "checkpoint_write": ("checkpoint", 2, ["step-000002"]),
}


@pytest.mark.parametrize("case", list(_KILLS))
def test_kill_9_then_resume_gives_the_uninterrupted_metrics(
    tmp_path: Path, straight: list[dict[str, Any]], case: str
) -> None:
    what, at, left = _KILLS[case]
    run_dir, done = _run_with_fault(tmp_path, what=what, at=at, action="kill")
    context = f"{case} (at {at}; REWARDLAB_FAULT_SEED={FAULT_SEED}): {done.stderr[-2000:]}"
    assert done.returncode == -signal.SIGKILL, context
    assert [p.name for p in list_checkpoints(run_dir)] == left, context
    assert not (run_dir / "final").exists()
    logged = _steps_logged(run_dir)
    assert 0 < len(logged) < STEPS, context  # killed mid-run, not before or after
    if case == "random_step":
        assert logged[-1] == at
    if case == "checkpoint_write":  # the interrupted save is a partial folder, not a checkpoint
        (partial,) = (run_dir / CHECKPOINTS).glob(".tmp-*")
        assert (partial / WEIGHTS).is_file() and not (partial / TRAINER_STATE).exists()
    _resume_matches(run_dir, straight)


# --------------------------------------------------------------------------- disk full


def _one_clear_error(stderr: str) -> str:
    """The run's one error message (whitespace joined: the console wraps lines)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count("error:") == 1, stderr[-3000:]
    return " ".join(stderr[stderr.index("error:") :].split())


@pytest.mark.parametrize("fails", [WEIGHTS, TRAINER_STATE])
def test_disk_full_during_a_checkpoint_write_stops_with_one_message(
    tmp_path: Path, straight: list[dict[str, Any]], fails: str
) -> None:
    run_dir, done = _run_with_fault(tmp_path, what="checkpoint", at=2, action="full", fails=fails)
    assert done.returncode == 2, done.stderr[-3000:]
    message = _one_clear_error(done.stderr)
    assert f"writing checkpoint step-000004 failed: {run_dir / CHECKPOINTS / 'step-000004' / fails}" in message
    assert "[EFBIG]" in message and "file-size limit" in message
    assert f"step-000002, is intact; once there is room, resume with --resume {run_dir}" in message
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002"]
    assert _partial_folders(run_dir) == []  # the failed save cleaned up after itself
    _resume_matches(run_dir, straight)


def test_disk_full_while_writing_the_metrics_stops_with_one_message(
    tmp_path: Path, straight: list[dict[str, Any]]
) -> None:
    run_dir, done = _run_with_fault(tmp_path, what="metrics", at=5, action="full")
    assert done.returncode == 2, done.stderr[-3000:]
    message = _one_clear_error(done.stderr)
    assert f"writing the metrics of step 5 failed: {run_dir / 'metrics.jsonl'}" in message
    assert "[EFBIG]; the checkpoints written before are intact; once there is room, resume" in message
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000004"]
    assert _steps_logged(run_dir) == [1, 2, 3, 4]  # step 5's line is torn: readers drop it
    assert (run_dir / "metrics.jsonl").read_text().endswith('{"step": 5')
    _resume_matches(run_dir, straight)


def test_no_space_left_in_a_checkpoint_says_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC, as safetensors reports it; and a step saved twice stays one complete checkpoint."""
    import torch
    from safetensors import SafetensorError

    from rewardlab import checkpoint
    from rewardlab.errors import WriteFailed

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(2):
        checkpoint.save_checkpoint(tmp_path, model, optimizer, scheduler, 1, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"] and _partial_folders(tmp_path) == []

    def no_space(tensors: Any, path: str) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", no_space)
    with pytest.raises(WriteFailed, match=(
        r"writing checkpoint step-000002 failed: .*step-000002/weights\.safetensors: no space left on the "
        r"device \(the disk is full\) \[ENOSPC\]; the newest complete checkpoint, step-000001, is intact"
    )) as failed:
        checkpoint.save_checkpoint(tmp_path, model, optimizer, scheduler, 2, {}, keep=2)
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == 28
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"] and _partial_folders(tmp_path) == []


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(28, "No space left on device")


def test_disk_full_while_exporting_the_final_model_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is written as final.tmp: a full disk leaves no partial folder and an old
    final/ untouched; safetensors' own error (the OS error only in its text) is read too."""
    from safetensors import SafetensorError

    from rewardlab.config import ModelConfig
    from rewardlab.errors import WriteFailed
    from rewardlab.models.loading import export_model, load_policy

    model, tokenizer = load_policy(ModelConfig(name="builtin:tiny"), seed=0)
    final = export_model(model, tokenizer, tmp_path / "final")
    before = (final / "model.safetensors").read_bytes()

    def safetensors_full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for failure in (_disk_full, safetensors_full):
        monkeypatch.setattr(type(model), "save_pretrained", failure)
        with pytest.raises(WriteFailed, match=(
            rf"writing the final model failed: {tmp_path / 'final.tmp'}: no space left on the device "
            rf"\(the disk is full\) \[ENOSPC\]; the run's checkpoints are intact; once there is room, "
            rf"resume with --resume {tmp_path} to write it again"
        )):
            export_model(model, tokenizer, tmp_path / "final")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
        assert (final / "model.safetensors").read_bytes() == before


def test_disk_full_while_writing_samples_or_the_report_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    from rewardlab.errors import WriteFailed
    from rewardlab.tracking import write_report
    from rewardlab.trainers.evaluate import write_samples

    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(WriteFailed, match=(
        rf"writing the samples of step 3 failed: {tmp_path / 'samples' / 'step-000003.jsonl'}: no space left "
        rf"on the device \(the disk is full\) \[ENOSPC\]; the checkpoints written before are intact"
    )):
        write_samples(tmp_path, 3, [{"completion": "4"}])
    assert list((tmp_path / "samples").iterdir()) == []  # no partial file left
    monkeypatch.undo()

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.7}\n')
    monkeypatch.setattr(Figure, "savefig", _disk_full)
    with pytest.raises(WriteFailed, match=(
        rf"writing the report failed: {tmp_path / 'report'}: .*\[ENOSPC\]; the run itself is complete; once "
        rf"there is room, draw the plots with: rewardlab report {tmp_path}"
    )):
        write_report(tmp_path)
    assert list((tmp_path / "report").iterdir()) == []


# --------------------------------------------------------------------------- reward faults

_RELEASE = threading.Event()  # lets the abandoned calls of the hanging rewards finish


@pytest.fixture
def release_hung_calls() -> Iterator[None]:
    _RELEASE.clear()
    yield
    _RELEASE.set()


def hangs(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A reward that never answers (until the test ends)."""
    _RELEASE.wait(60)
    return [0.0] * len(completions)


def _source(fn: Any, on_error: str = "raise", timeout: float | None = None, name: str = "r") -> RewardSource:
    return RewardSource(name, 1.0, fn, on_error=on_error, fallback=-1.0, timeout=timeout)


def _score(source: RewardSource, completions: list[str]) -> list[float]:
    scores = score_completions([source], ["p"] * len(completions), completions, {})
    return scores[source.name].tolist()


def _raises_on_empty(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    return [1.0 / len(c) for c in completions]


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["in_caller", "in_worker_thread"])
def test_a_reward_that_raises_names_the_row_or_falls_back(timeout: float | None) -> None:
    with pytest.raises(RewardlabError, match=r"reward 'r' raised ZeroDivisionError: .*test_faults\.py:\d+ .*on completion 1"):
        _score(_source(_raises_on_empty, timeout=timeout), ["ab", ""])
    source = _source(_raises_on_empty, "fallback", timeout)
    assert _score(source, ["ab", "", "a"]) == [0.5, -1.0, 1.0]
    assert drain_failure_counts([source]) == {"failures/r/raised": 1.0}


def test_a_hanging_reward_is_abandoned_after_its_timeout(release_hung_calls: None) -> None:
    started = time.perf_counter()
    with pytest.raises(
        RewardlabError,
        match=r"reward 'slow' did not return within its timeout \(0\.2 s\) on a batch of 3 completions "
        r"\(0-2\) \(the first: prompt 'p', completion 'a'\); the call was abandoned.*failures/slow/timeout",
    ):
        _score(_source(hangs, timeout=0.2, name="slow"), ["a", "b", "c"])
    source = _source(hangs, "fallback", 0.2, name="slow")
    assert _score(source, ["a", "b", "c"]) == [-1.0, -1.0, -1.0]
    assert drain_failure_counts([source]) == {"failures/slow/timeout": 3.0}
    assert time.perf_counter() - started < 2.0  # not waiting for the hung calls
    fast = _source(lambda prompts, completions: [0.5] * len(completions), timeout=0.2)
    assert _score(fast, ["a", "b"]) == [0.5, 0.5]  # a reward in time scores as without a limit


def test_a_timeout_when_scoring_row_by_row_names_the_completion(release_hung_calls: None) -> None:
    def bad_batch_then_hangs_on_x(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        if len(completions) > 1:
            raise ValueError("batch")  # so the rows are scored one at a time
        if completions == ["x"]:
            _RELEASE.wait(60)
        return [1.0]

    with pytest.raises(RewardlabError, match=r"did not return within its timeout \(0\.2 s\) on completion 2 \(the first: prompt 'p', completion 'x'\)"):
        _score(_source(bad_batch_then_hangs_on_x, timeout=0.2), ["a", "b", "x"])


def test_a_wrong_count_names_the_source_and_both_counts() -> None:
    for on_error in ("raise", "fallback"):  # a broken contract, not a bad row: never a fallback
        source = _source(lambda prompts, completions: [0.0] * 3, on_error, name="short")
        with pytest.raises(RewardlabError, match=r"reward 'short' returned 3 scores for 5 completions"):
            _score(source, ["a"] * 5)


def test_nan_scores_name_the_row_or_fall_back() -> None:
    def nan_on_b(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [math.nan if c == "b" else 1.0 for c in completions]

    with pytest.raises(RewardlabError, match=r"reward 'r' returned nan for completion 1.*return None, not NaN"):
        _score(_source(nan_on_b), ["a", "b"])
    source = _source(nan_on_b, "fallback")
    assert _score(source, ["a", "b"]) == [1.0, -1.0]
    assert drain_failure_counts([source]) == {"failures/r/not_finite": 1.0}


def test_none_is_does_not_apply_per_row_and_an_error_as_the_whole_answer() -> None:
    per_row = _score(_source(lambda prompts, completions: [None, 1.0]), ["a", "b"])
    assert math.isnan(per_row[0]) and per_row[1] == 1.0  # NaN = the reward does not apply
    with pytest.raises(RewardlabError, match=r"reward 'r' returned None \(NoneType\); .*as a list of 2"):
        _score(_source(lambda prompts, completions: None, "fallback"), ["a", "b"])


def test_timeout_in_a_training_run(tmp_path: Path, release_hung_calls: None) -> None:
    hanging = {"name": "test_faults:hangs", "timeout": 0.2, "fallback": 0.0}
    rewards = [{"name": "dense_rewards:digit_fraction"}, {**hanging, "on_error": "fallback"}]
    config = _rl_config(tmp_path / "fallback", **{**SETTINGS, "train.steps": 2, "rewards": rewards})
    train(config)
    lines = [r for r in read_metrics(tmp_path / "fallback" / "metrics.jsonl") if "reward" in r]
    assert [r["failures/test_faults:hangs/timeout"] for r in lines] == [16.0, 16.0]  # every row, each step
    assert [r["reward/test_faults:hangs"] for r in lines] == [0.0, 0.0]

    rewards = [{"name": "dense_rewards:digit_fraction"}, hanging]  # on_error: raise
    config = _rl_config(tmp_path / "raise", **{**SETTINGS, "train.steps": 2, "rewards": rewards})
    with pytest.raises(RewardlabError, match=r"reward 'test_faults:hangs' did not return within its timeout \(0\.2 s\)"):
        train(config)
