"""Tests for rewardlab.tracking: metrics.jsonl sink, sink factory errors, PNG reports."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from rewardlab.errors import ConfigError, RewardlabError
from rewardlab.tracking import (
    METRICS_FILENAME,
    JsonlSink,
    MetricSink,
    TensorBoardSink,
    WandbSink,
    close_all,
    make_sinks,
    read_metrics,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(step: int) -> dict[str, float]:
    """Deterministic, non-round floats so byte comparisons exercise float formatting."""
    return {"loss": 1.0 / (step + 3), "reward/mean": step * 0.1 + 0.05, "kl": step / 7.0}


def _log_steps(sink: MetricSink, steps: range) -> None:
    for step in steps:
        sink.log(step, _metrics(step))


# ----------------------------------------------------------------------- JsonlSink


def test_jsonl_sink_writes_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        assert isinstance(sink, MetricSink)
        _log_steps(sink, range(1, 4))

    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {"step": 1, **_metrics(1)}
    assert read_metrics(path) == [{"step": s, **_metrics(s)} for s in range(1, 4)]


def test_jsonl_sink_fsyncs_every_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    with JsonlSink(tmp_path / METRICS_FILENAME) as sink:
        _log_steps(sink, range(3))
    assert len(calls) == 3


def test_jsonl_sink_accepts_numpy_and_torch_scalars(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        sink.log(0, {"a": np.float32(0.5), "b": torch.tensor(2.0), "c": 3})  # type: ignore[dict-item]
    assert read_metrics(path) == [{"step": 0, "a": 0.5, "b": 2.0, "c": 3.0}]


def test_jsonl_sink_rejects_step_as_metric_name(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / METRICS_FILENAME) as sink, pytest.raises(ValueError, match="step"):
        sink.log(1, {"step": 3.0})


def test_new_run_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    path.write_text('{"step": 99, "loss": 1.0}\n')
    with JsonlSink(path) as sink:
        sink.log(0, {"loss": 2.0})
    assert read_metrics(path) == [{"step": 0, "loss": 2.0}]


def test_resume_continues_file_exactly_like_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    with JsonlSink(reference) as sink:
        _log_steps(sink, range(1, 9))

    # Interrupted run: got to step 6, but the last checkpoint was step 4.
    resumed = tmp_path / "resumed.jsonl"
    with JsonlSink(resumed) as sink:
        _log_steps(sink, range(1, 7))
    with JsonlSink(resumed, resume_from_step=4) as sink:
        assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4]
        _log_steps(sink, range(5, 9))

    assert resumed.read_bytes() == reference.read_bytes()


def test_resume_rewrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        _log_steps(sink, range(1, 6))
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    JsonlSink(path, resume_from_step=2).close()
    assert len(replaced) == 1 and replaced[0][1] == str(path)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILENAME]  # no temp left


def test_resume_without_existing_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "sub" / METRICS_FILENAME
    with JsonlSink(path, resume_from_step=10) as sink:
        sink.log(11, {"loss": 0.5})
    assert read_metrics(path) == [{"step": 11, "loss": 0.5}]


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        _log_steps(sink, range(1, 3))
    with path.open("a") as handle:
        handle.write('{"step": 3, "loss": 0.1')  # crash mid-write: no closing brace/newline
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_resume_after_torn_line_yields_valid_file(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        _log_steps(sink, range(1, 4))
    with path.open("a") as handle:
        handle.write('{"step": 4, "lo')
    with JsonlSink(path, resume_from_step=3) as sink:
        sink.log(4, _metrics(4))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(RewardlabError, match="line 2"):
        read_metrics(path)


def test_read_metrics_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_metrics(tmp_path / "nope.jsonl") == []


def test_nan_values_round_trip(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    with JsonlSink(path) as sink:
        sink.log(1, {"loss": float("nan")})
    assert math.isnan(read_metrics(path)[0]["loss"])


# ---------------------------------------------------------------------- make_sinks


def test_make_sinks_always_includes_jsonl(tmp_path: Path) -> None:
    for names in ([], ["jsonl"], ["jsonl", "jsonl"]):
        sinks = make_sinks(names, tmp_path, {})
        assert [type(s) for s in sinks] == [JsonlSink]
        close_all(sinks)
    assert (tmp_path / METRICS_FILENAME).exists()


def test_make_sinks_passes_resume_to_jsonl(tmp_path: Path) -> None:
    sinks = make_sinks([], tmp_path, {})
    _log_steps(sinks[0], range(1, 6))
    close_all(sinks)
    close_all(make_sinks([], tmp_path, {}, resume_from_step=3))
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILENAME)] == [1, 2, 3]


def test_make_sinks_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_sinks(["tensorbord"], tmp_path, {})
    message = str(info.value)
    assert "logging.sinks" in message and "'tensorbord'" in message
    assert "did you mean 'tensorboard'" in message
    for valid in ("jsonl", "tensorboard", "wandb", "mlflow"):
        assert valid in message
    assert not (tmp_path / METRICS_FILENAME).exists()  # nothing created on a config error


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_make_sinks_missing_package(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import name` raise ImportError.
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError) as info:
        make_sinks(["jsonl", name], tmp_path, {})
    message = str(info.value)
    assert "logging.sinks" in message
    assert f"'{name}'" in message
    assert "pip install 'rewardlab[tracking]'" in message
    assert not (tmp_path / METRICS_FILENAME).exists()  # checked before touching files


def test_tensorboard_sink_writes_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    sinks = make_sinks(["tensorboard"], tmp_path, {})
    assert [type(s) for s in sinks] == [JsonlSink, TensorBoardSink]
    for sink in sinks:
        _log_steps(sink, range(3))
    close_all(sinks)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


class _FakeWandbRun:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.id = kwargs.get("id") or "run123"
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = False

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


def test_wandb_sink_wiring_with_fake_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[_FakeWandbRun] = []

    def init(**kwargs: Any) -> _FakeWandbRun:
        runs.append(_FakeWandbRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    config = {"logging": {"project": "proj", "sinks": ["wandb"]}, "out": tmp_path}
    sinks = make_sinks(["wandb"], tmp_path, config)
    assert isinstance(sinks[1], WandbSink)
    sinks[1].log(1, {"loss": 0.5})
    close_all(sinks)
    run = runs[0]
    assert run.kwargs["project"] == "proj"
    assert run.kwargs["config"]["out"] == str(tmp_path)  # made JSON-safe
    assert run.logged == [(1, {"loss": 0.5})] and run.finished

    # A resume reuses the saved wandb run id.
    close_all(make_sinks(["wandb"], tmp_path, config, resume_from_step=1))
    assert runs[1].kwargs["id"] == "run123" and runs[1].kwargs["resume"] == "allow"


def test_wandb_init_failure_is_config_error_and_closes_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def init(**kwargs: Any) -> None:
        raise RuntimeError("api key not configured")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with pytest.raises(ConfigError, match="wandb login"):
        make_sinks(["wandb"], tmp_path, {})


# -------------------------------------------------------------------------- report


def _write_synthetic_run(run_dir: Path, steps: int = 30) -> None:
    """A run with every group; eval metrics only every 10 steps, as a trainer would log."""
    with JsonlSink(run_dir / METRICS_FILENAME) as sink:
        for step in range(1, steps + 1):
            metrics = {
                "reward/mean": math.tanh(step / 10),
                "reward/math": math.tanh(step / 12),
                "kl": 0.01 * step,
                "entropy": 2.0 - step / steps,
                "completion_length": 100.0 + step,
                "loss": 1.0 / step,
                "lr": 1e-5,  # belongs to no group: ignored
            }
            if step % 10 == 0:
                metrics |= {"eval/accuracy": step / 40, "eval/pass@4": step / 35}
            sink.log(step, metrics)


def _assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height >= 200 and width >= 300
    assert image.std() > 0.01  # not a blank canvas


def test_report_writes_one_png_per_group_and_overview(tmp_path: Path) -> None:
    _write_synthetic_run(tmp_path)
    written = write_report(tmp_path)
    names = [p.name for p in written]
    assert names == [
        "reward.png",
        "accuracy.png",
        "kl.png",
        "entropy.png",
        "completion_length.png",
        "loss.png",
        "overview.png",
    ]
    for path in written:
        assert path.parent == tmp_path / "report"
        _assert_valid_png(path)
    assert not list((tmp_path / "report").glob("*.tmp"))  # temp files renamed away


def test_report_skips_absent_groups(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / METRICS_FILENAME) as sink:
        sink.log(1, {"loss": 1.0})
        sink.log(2, {"loss": 0.5})
        sink.log(2, {"eval/accuracy": 0.3})  # eval logged separately at the same step
    written = write_report(tmp_path)
    assert [p.name for p in written] == ["accuracy.png", "loss.png", "overview.png"]
    for path in written:
        _assert_valid_png(path)


def test_report_missing_metrics_file(tmp_path: Path) -> None:
    with pytest.raises(RewardlabError) as info:
        write_report(tmp_path)
    message = str(info.value)
    assert METRICS_FILENAME in message and "no steps yet" in message
    assert not (tmp_path / "report").exists()


def test_report_empty_metrics_file(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILENAME).write_text("")
    with pytest.raises(RewardlabError, match="no steps yet"):
        write_report(tmp_path)


def test_report_with_only_torn_line_has_no_steps(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILENAME).write_text('{"step": 1, "lo')
    with pytest.raises(RewardlabError, match="no steps yet"):
        write_report(tmp_path)
