"""A run with ``engine: ray`` and no ``ray.address`` starts a local Ray cluster
for the run and leaves no Ray process behind when it ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")


def _ray_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"raylet" in cmdline or b"gcs_server" in cmdline or b"ray::" in cmdline:
            found.add(int(entry.name))
    return found


def test_run_starts_and_stops_its_own_cluster(tmp_path: Path) -> None:
    import ray

    from rewardlab.config import RunConfig
    from rewardlab.trainers.online import train

    assert not ray.is_initialized()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    before = _ray_processes()
    run_dir = tmp_path / "run"
    config = RunConfig.model_validate({
        "engine": "ray", "ray": {"num_cpus": 2, "cpus_per_worker": 0.5}, "run_dir": str(run_dir),
        "train": {"steps": 2, "prompts_per_step": 2}, "rollout": {"num_generations": 2}, "eval": {"every": 0},
    })
    train(config)
    assert (run_dir / "final").is_dir() and (run_dir / "metrics.jsonl").is_file()
    assert not ray.is_initialized()  # the run shut down the cluster it started
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # and put the signal handlers back
    for _ in range(50):  # Ray's processes exit a moment after shutdown
        left = _ray_processes() - before
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"Ray processes left running: {sorted(left)}"
