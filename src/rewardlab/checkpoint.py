"""Atomic checkpoints and exact resume.

A checkpoint is a folder ``checkpoints/step-000123/`` holding:

* ``weights.safetensors``: the trainable weights (the LoRA adapter only, when LoRA is on);
* ``trainer.pt``: optimizer and LR-schedule state, RNG states (python, torch), the step,
  the data position and any algorithm state.

It is written under a temporary name (``.tmp-*``) and renamed into place, so a crash leaves
either the previous checkpoint or the new one, never half of one; resume takes the newest
complete one and removes the partial folders. A failed write (disk full) is a
``WriteFailed`` naming the file.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rewardlab.errors import RewardlabError, WriteFailed, os_error_in

CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer.pt"
_PREFIX = "step-"
_PARTIAL = ".tmp-"  # a checkpoint being written (or left by a crash while it was)


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
    """Write ``checkpoints/step-<step>`` atomically, then prune all but the newest ``keep``.

    The files are written in a ``.tmp-*`` folder that is renamed into place once complete, so
    a crash (even ``kill -9``) leaves the checkpoints as they were plus, at most, a ``.tmp-*``
    folder, which is ignored and removed by the next save or resume. A failed write (disk
    full, quota, file-size limit) removes the partial folder and raises ``WriteFailed``
    naming the file; the earlier checkpoints are untouched."""
    root = run_dir / CHECKPOINTS
    target = root / f"{_PREFIX}{step:06d}"
    writing = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)
        tmp = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=root))
    except OSError as err:
        raise _write_failed(run_dir, target, writing, err) from err
    try:
        writing = target / WEIGHTS
        _save_weights(trainable_state(model), tmp / WEIGHTS)
        writing = target / TRAINER_STATE
        state = TrainerState(step, optimizer.state_dict(), scheduler.state_dict(), rng_state(), extra)
        _save_torch(state.__dict__, tmp / TRAINER_STATE)
        writing = target
        _fsync_dir(tmp)
        if target.exists():  # the same step saved again (e.g. the final step): replace it
            aside = root / f"{_PARTIAL}old-{target.name}"
            os.replace(target, aside)  # one rename, so a crash leaves one of the two complete
            os.replace(tmp, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync(root)  # the rename itself reaches the disk
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(run_dir, target, writing, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    return target


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete the ``.tmp-*`` folders a crashed or failed save left in ``checkpoints/``
    (never a complete checkpoint: those are only ever ``step-*``)."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_PARTIAL):
                shutil.rmtree(path, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Delete a checkpoint: renamed out of the ``step-*`` names first, so a crash during the
    deletion never leaves a half-deleted folder that looks like a checkpoint."""
    aside = folder.with_name(f"{_PARTIAL}old-{folder.name}")
    try:
        os.replace(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


def _write_failed(run_dir: Path, target: Path, path: Path, err: OSError) -> WriteFailed:
    found = list_checkpoints(run_dir)
    if found:
        then = (
            f"the newest complete checkpoint, {found[-1].name}, is intact; once there is room, "
            f"resume with --resume {run_dir}"
        )
    else:
        then = "the run has no earlier checkpoint; once there is room, start the run again"
    return WriteFailed(f"checkpoint {target.name}", path, err, then)


def _save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, whose I/O errors come back as ``OSError`` (the library
    raises ``SafetensorError`` with the OS error's number in its text)."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from err


class _Recorder:
    """A binary file that remembers the ``OSError`` of a failed write (``torch.save`` turns it
    into a ``RuntimeError`` without the cause)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path``; a failed write raises the ``OSError`` behind it."""
    with path.open("wb") as handle:
        recorder = _Recorder(handle)
        try:
            torch.save(obj, recorder)
        except RuntimeError as err:
            if recorder.error is None:
                raise
            raise recorder.error from err
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync(folder)


def _fsync(folder: Path) -> None:
    """fsync a folder, so the names in it (a rename) are on disk (where the system can)."""
    if os.name == "nt":  # folders cannot be opened there; renames are durable as they are
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: a file system without folder fsync
            raise
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (``.tmp-*`` folders are partial ones)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith(_PREFIX) and (p / TRAINER_STATE).is_file() and (p / WEIGHTS).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir``, or a clear error when there is none;
    partial ones (``.tmp-*`` folders left by a crash during a save) are removed."""
    if not run_dir.is_dir():
        raise RewardlabError(f"--resume {run_dir}: no such run folder")
    remove_partial_checkpoints(run_dir)  # what a crash during a save left
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
    """Restore weights, optimizer, schedule and RNG from ``folder``; returns the state. A
    missing, truncated or foreign file is a ``RewardlabError`` naming it (nothing is changed)."""
    weights = _read_checkpoint_file(folder / WEIGHTS, lambda p: load_file(str(p)))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    unknown += sorted(n for n in weights if n in params and weights[n].shape != params[n].shape)
    if unknown:
        raise RewardlabError(
            f"{folder / WEIGHTS}: weights {unknown[:3]} do not belong to this model; resume with "
            "the same model and LoRA settings as the run that wrote the checkpoint"
        )
    raw = read_trainer_state(folder)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = TrainerState(**raw)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    set_rng_state(state.rng)
    return state


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer.pt`` as a dict (step, optimizer, scheduler, rng, extra), for
    a caller that must know the step or ``extra`` before restoring; a damaged or foreign file
    is one message naming it."""
    # weights_only: a checkpoint is data, never code to run.
    raw = _read_checkpoint_file(folder / TRAINER_STATE, lambda p: torch.load(p, weights_only=True))
    if not isinstance(raw, dict) or set(raw) != set(TrainerState.__dataclass_fields__):
        raise RewardlabError(_damaged(folder / TRAINER_STATE, "not a rewardlab trainer state"))
    return raw


def _read_checkpoint_file(path: Path, read: Any) -> Any:
    """``read(path)``; a missing or unreadable file becomes one message naming it."""
    if not path.is_file():
        raise RewardlabError(_damaged(path, "the file is missing"))
    try:
        return read(path)
    except Exception as err:  # noqa: BLE001 - safetensors, zip and unpickling errors differ
        reason = " ".join(str(err).split()).split(". ")[0][:200] or type(err).__name__
        raise RewardlabError(_damaged(path, reason)) from None


def _damaged(path: Path, reason: str) -> str:
    """What to do about a checkpoint file that cannot be used: resume from an older one."""
    folder = path.parent
    older = [p for p in list_checkpoints(folder.parent.parent) if p.name < folder.name]
    then = (
        f"to resume from the checkpoint before it ({older[-1].name}), move {folder} out of "
        f"{folder.parent} and resume again"
        if older
        else "the run has no older checkpoint, so start it again in a new run_dir"
    )
    return (
        f"{path}: this checkpoint file is damaged or was not written by rewardlab ({reason}); "
        f"it is left as it is; {then}"
    )
