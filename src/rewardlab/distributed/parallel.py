"""Data-parallel learners: rank 0 is the trainer process itself (it keeps the run folder,
metrics and checkpoints exactly as a local run), ranks 1..N-1 are Ray actors holding their own
copy of the policy and optimizer. All ranks run the same update on the same batch; each
computes the gradient of its share of every mini-batch, the shares are summed with
torch.distributed (gloo on CPU, NCCL on GPU), and every rank takes the same optimizer step, so
the copies stay equal without sending weights.

A learner that dies makes the collective fail on the others; the trainer then raises
``LearnerLost`` and the run resumes from its last checkpoint (``trainers/online.py``).
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig
from rewardlab.errors import LearnerLost, RewardlabError


class DataParallel:
    """One rank's part in a data-parallel update (used by ``trainers.learner.update``)."""

    def __init__(self, rank: int, world: int):
        self.rank = rank
        self.world = world

    def share(self, group: torch.Tensor, whole_groups: bool) -> torch.Tensor:
        """The rows of a mini-batch this rank computes: the mini-batch cut into ``world``
        contiguous parts (never splitting a prompt's group when the loss compares them)."""
        from rewardlab.trainers.learner import batch_slices

        size = group.numel()
        parts = batch_slices(group, torch.arange(size), -(-size // self.world), whole_groups)
        return parts[self.rank] if self.rank < len(parts) else torch.zeros(0, dtype=torch.long)

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every trainable parameter's gradient over the ranks (one flat all-reduce). A
        parameter no rank has a gradient for keeps none, as in a single learner, so the
        optimizer skips it (AdamW would otherwise decay it)."""
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device
        flat = [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=device)
            for p in params
        ]
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        buffer = torch.cat([f.float() for f in flat] + [has])
        dist.all_reduce(buffer)
        offset = 0
        for p, found in zip(params, buffer[-len(params) :].tolist(), strict=True):
            n = p.numel()
            if found > 0:
                p.grad = buffer[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n

    def sum_statistics(
        self, sums: dict[str, float], counts: dict[str, float], shared: tuple[str, ...]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Sums and counts of the micro-batch statistics over the ranks; ``shared`` keys are the
        same on every rank already (computed after the gradient sum) and are kept as they are."""
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (dict(sums), dict(counts)))
        total_sums: dict[str, float] = {}
        total_counts: dict[str, float] = {}
        for rank_sums, rank_counts in gathered:
            for k, v in rank_sums.items():
                if k not in shared:
                    total_sums[k] = total_sums.get(k, 0.0) + v
            for k, v in rank_counts.items():
                if k not in shared:
                    total_counts[k] = total_counts.get(k, 0.0) + v
        for k in shared:
            if k in sums:
                total_sums[k] = sums[k]
            if k in counts:
                total_counts[k] = counts[k]
        return total_sums, total_counts


def init_group(rank: int, world: int, address: str, timeout: float, on_gpu: bool) -> None:
    """Join the learners' process group: NCCL when the policy lives on a GPU, gloo otherwise."""
    backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{address}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )


class LearnerWorker:
    """The actor of ranks 1..N-1: the run's policy, optimizer and schedule, built as the
    trainer builds them and then loaded with rank 0's state."""

    def __init__(self, config: dict[str, Any], rank: int, address: str):
        from rewardlab.models.loading import load_policy
        from rewardlab.trainers.common import make_optimizer, make_scheduler
        from rewardlab.trainers.online import optimizer_steps

        self.config = RunConfig.model_validate(config)
        if self.config.ray.torch_threads is not None:
            torch.set_num_threads(self.config.ray.torch_threads)
        self.policy, _ = load_policy(self.config.model, seed=self.config.seed)
        self.optimizer = make_optimizer(self.policy.parameters(), self.config.train.optim)
        self.scheduler = make_scheduler(self.optimizer, self.config.train.optim, optimizer_steps(self.config))
        self.parallel = DataParallel(rank, self.config.ray.learners)
        self.address = address

    def pid(self) -> int:
        return os.getpid()

    def join(self) -> None:
        on_gpu = next(self.policy.parameters()).is_cuda
        init_group(self.parallel.rank, self.parallel.world, self.address, self.config.ray.collective_timeout, on_gpu)

    def load(self, weights: dict[str, torch.Tensor], optimizer: dict[str, Any], scheduler: dict[str, Any]) -> None:
        self.policy.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)

    def update(self, batch: RolloutBatch, step: int, coefs: dict[str, float]) -> None:
        from rewardlab.trainers.learner import update

        update(self.policy, self.optimizer, self.scheduler, batch, self.config, step, coefs, None, self.parallel)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """Rank 0 (this process) and the learner actors of ranks 1..N-1."""

    def __init__(self, config: RunConfig, ray: Any, policy: Any, optimizer: Any, scheduler: Any):
        self.ray = ray
        self.config = config
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        world = config.ray.learners
        address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
        actor = ray.remote(LearnerWorker)
        dump = config.model_dump(mode="json")
        self.workers = [
            actor.options(num_cpus=config.ray.cpus_per_worker, max_restarts=0).remote(dump, rank, address)
            for rank in range(1, world)
        ]
        self.parallel = DataParallel(0, world)
        self._call([w.pid.remote() for w in self.workers])
        joining = [w.join.remote() for w in self.workers]
        init_group(0, world, address, config.ray.collective_timeout, next(policy.parameters()).is_cuda)
        self._call(joining)
        self._call([w.load.remote(policy.state_dict(), optimizer.state_dict(), scheduler.state_dict()) for w in self.workers])

    def update(self, batch: RolloutBatch, step: int, coefs: dict[str, float], run_dir: Path) -> dict[str, float]:
        from rewardlab.trainers.learner import update

        shared = self.ray.put(batch)
        futures = [w.update.remote(shared, step, coefs) for w in self.workers]
        try:
            out = update(self.policy, self.optimizer, self.scheduler, batch, self.config, step, coefs, None, self.parallel)
        except RuntimeError as e:  # a peer died inside a collective
            raise LearnerLost(f"a data-parallel learner was lost during step {step} ({e})", run_dir) from None
        self._call(futures, run_dir)
        return out

    def _call(self, futures: list[Any], run_dir: Path | None = None) -> list[Any]:
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(futures)
        except RayActorError as e:
            if run_dir is None:  # while starting: nothing to resume from
                raise RewardlabError(f"ray: a data-parallel learner failed to start: {e}") from None
            raise LearnerLost(f"a data-parallel learner was lost ({e})", run_dir) from None

    def pids(self) -> list[int]:
        return self._call([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker, no_restart=True)
        self.workers = []
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
