"""Atomic checkpoints and exact resume.

A checkpoint is a folder ``checkpoints/step-000123/`` holding:

* ``weights.safetensors``: the trainable weights (the LoRA adapter only, when LoRA is on);
* ``trainer.pt``: optimizer and LR-schedule state, RNG states (python, torch), the step,
  the data position and any algorithm state.

It is written under a temporary name and renamed into place, so a crash leaves either the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rewardlab.errors import RewardlabError

CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer.pt"
_PREFIX = "step-"


@dataclass
class TrainerState:
    """Everything besides the weights that a resumed run needs to continue exactly."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes: all of them, or only the adapter's."""
    return {
        name: p.detach().contiguous().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, then prune all but the newest ``keep``."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{_PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        state = TrainerState(step, optimizer.state_dict(), scheduler.state_dict(), rng_state(), extra)
        torch.save(state.__dict__, tmp / TRAINER_STATE)
        _fsync_dir(tmp)
        if target.exists():  # the same step saved again (e.g. the final step): replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir``, or a clear error when there is none."""
    if not run_dir.is_dir():
        raise RewardlabError(f"--resume {run_dir}: no such run folder")
    found = list_checkpoints(run_dir)
    if not found:
        raise RewardlabError(
            f"--resume {run_dir}: the run has no checkpoint yet (nothing in {run_dir / CHECKPOINTS}); "
            "start it again without --resume (its logged steps will be replaced), and set "
            "checkpoint.every to save more often"
        )
    return found[-1]


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """Restore weights, optimizer, schedule and RNG from ``folder``; returns the state."""
    weights = load_file(str(folder / WEIGHTS))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise RewardlabError(
            f"{folder / WEIGHTS}: weights {unknown[:3]} do not belong to this model; resume with "
            "the same model and LoRA settings as the run that wrote the checkpoint"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    # weights_only: a checkpoint is data, never code to run.
    raw = torch.load(folder / TRAINER_STATE, weights_only=True)
    state = TrainerState(**raw)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    set_rng_state(state.rng)
    return state
