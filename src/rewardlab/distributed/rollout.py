"""Rollout workers as Ray actors: each holds a copy of the policy, generates its share of a
step's prompts, and takes the learner's weights after every update.

A step's prompts are split into contiguous shards, one per worker. Sampling is seeded per
prompt (``rollout/seeded.py``), so the joined batch is the one a single process would draw.
A worker that dies (its process killed, its node lost) is replaced by a fresh actor that gets
the current weights, and its shard is generated again with the same seeds: nothing is lost
and the samples are the same as if nothing had happened.

Asynchronous mode (``ray.mode: async``) asks the workers for the next steps' batches before
the current update is done; each batch carries the policy version that sampled it, and one
older than ``ray.max_staleness`` updates is never returned (it is generated again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.batch import RolloutBatch, concat_batches
from rewardlab.config import RunConfig
from rewardlab.data.tasks import Task
from rewardlab.distributed.cluster import Cluster, check_capacity, connect
from rewardlab.errors import RewardlabError
from rewardlab.rewards import RewardSource
from rewardlab.rollout.hf import SamplingParams


class RolloutWorker:
    """The actor: a policy copy and a generate call (per-prompt seeded sampling)."""

    def __init__(self, model: dict[str, Any], seed: int, threads: int | None):
        from rewardlab.config import ModelConfig
        from rewardlab.models.loading import load_policy

        if threads is not None:
            torch.set_num_threads(threads)
        self.policy, self.tokenizer = load_policy(ModelConfig.model_validate(model), seed=seed)
        self.version = -1

    def pid(self) -> int:
        return os.getpid()

    def set_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        unexpected = self.policy.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"weights the worker's model does not have: {unexpected[:3]}")
        self.version = version
        return version

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: list[int]
    ) -> tuple[RolloutBatch, int]:
        from rewardlab.rollout.seeded import generate_seeded

        return generate_seeded(self.policy, self.tokenizer, prompts, params, seeds), self.version


def trainable_weights(policy: Any) -> dict[str, torch.Tensor]:
    """What an update can change: the trainable parameters (the adapter under LoRA)."""
    # no clone: ray.put copies the tensors into the object store as it is called
    return {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}


@dataclass
class _Request:
    prompts: list[str]
    params: SamplingParams
    seeds: list[int]
    shards: list[tuple[int, int]]  # [start, end) prompt ranges, one per worker used
    futures: list[Any]
    rows: list[dict[str, Any]] | None = None  # the prompts' dataset rows, for reward workers
    scored: list[Any] | None = None  # per shard: the reward worker's call, chained on generation


class RayRollout:
    """A pool of ``ray.rollout_workers`` rollout actors behind the ``RolloutEngine`` interface."""

    def __init__(self, config: RunConfig, policy: Any, pad_id: int, cluster: Cluster | None = None):
        self.pad_id = pad_id
        self.cluster = cluster or connect(config.ray)
        self.ray = self.cluster.ray
        try:
            check_capacity(self.ray, config.ray)
        except RewardlabError:
            self.cluster.close()
            raise
        self.config = config
        self.actor = self.ray.remote(RolloutWorker)
        self.weights: Any = None
        self.version = 0
        self.restarts = 0
        self.pending: dict[tuple[Any, ...], tuple[_Request, int]] = {}
        self.staleness: list[int] = []
        self.dropped = 0  # requests thrown away as too stale
        self.workers = [self._start_worker() for _ in range(config.ray.rollout_workers)]
        self.scorers: list[Any] = []
        self.remote_sources: dict[str, RewardSource] = {}
        self.sync(policy, 0)
        self.ray.get([w.pid.remote() for w in self.workers])  # fail here, not mid-step

    def attach_rewards(self, sources: list[RewardSource], task: Task | None) -> None:
        """Score the run's stateless reward sources on ``ray.reward_workers`` actors."""
        from rewardlab.distributed.rewards import RewardWorker, is_remote_capable

        count = self.config.ray.reward_workers
        self.remote_sources = {s.name: s for s in sources if is_remote_capable(s)} if count else {}
        if not self.remote_sources:
            return
        self.scorer_actor = self.ray.remote(RewardWorker)
        self.scorer_args = (self.config.model_dump(mode="json"), task, list(self.remote_sources))
        self.scorers = [self._start_scorer() for _ in range(count)]

    def _start_scorer(self) -> Any:
        options = {"num_cpus": self.config.ray.cpus_per_worker, "max_restarts": 0}
        return self.scorer_actor.options(**options).remote(*self.scorer_args)

    def _start_worker(self) -> Any:
        cfg = self.config.ray
        worker = self.actor.options(num_cpus=cfg.cpus_per_worker, max_restarts=0).remote(
            self.config.model.model_dump(mode="json"), self.config.seed, cfg.torch_threads
        )
        if self.weights is not None:
            worker.set_weights.remote(self.weights, self.version)
        return worker

    def sync(self, policy: Any, version: int) -> None:
        self.weights = self.ray.put(trainable_weights(policy))
        self.version = version
        for worker in self.workers:
            worker.set_weights.remote(self.weights, version)

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> RolloutBatch:
        """The batch, from a prefetched request when one matches and is fresh enough. With
        ``rows`` and reward workers, ``batch.scores`` holds the remote sources' scores."""
        self._drop_stale()
        found = self.pending.pop(_key(prompts, params, seeds), None)
        request = found[0] if found is not None else self._submit(prompts, params, seeds, rows)
        return self._collect(request)

    def prefetch(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> None:
        """Start generating a later step's batch now, with the weights the workers hold (the
        workers run their calls in order, so the request samples from version ``self.version``)."""
        key = _key(prompts, params, seeds)
        if key not in self.pending:
            self.pending[key] = (self._submit(prompts, params, seeds, rows), self.version)

    def _drop_stale(self) -> None:
        """Forget requests sampled from a policy more than ``max_staleness`` updates old."""
        bound = self.config.ray.max_staleness
        for key in [k for k, (_, asked_at) in self.pending.items() if self.version - asked_at > bound]:
            del self.pending[key]
            self.dropped += 1

    def _submit(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None
    ) -> _Request:
        count = min(len(self.workers), len(prompts))
        bounds = [round(i * len(prompts) / count) for i in range(count + 1)]
        shards = [(bounds[i], bounds[i + 1]) for i in range(count)]
        futures = [self._ask(i, prompts, params, seeds, shard) for i, shard in enumerate(shards)]
        request = _Request(prompts, params, seeds, shards, futures, rows)
        if self.scorers and rows is not None:
            request.scored = [self._score(i, future, request) for i, future in enumerate(futures)]
        return request

    def _score(self, i: int, generated: Any, request: _Request) -> Any:
        assert request.rows is not None
        a, b = request.shards[i]
        scorer = self.scorers[i % len(self.scorers)]
        return scorer.score.remote(generated, request.rows[a:b], request.params.n)

    def _ask(self, i: int, prompts: list[str], params: SamplingParams, seeds: list[int], shard: tuple[int, int]) -> Any:
        a, b = shard
        return self.workers[i].generate.remote(prompts[a:b], params, seeds[a:b])

    def _collect(self, request: _Request) -> RolloutBatch:
        parts: list[RolloutBatch] = []
        for i, (shard, future) in enumerate(zip(request.shards, request.futures, strict=True)):
            part, version = self._result(i, request, shard, future)
            if request.scored is not None:
                part.scores = self._remote_scores(i, request, part, version)
            self.staleness.append(self.version - version)
            part.group = part.group + shard[0]
            parts.append(part)
        return concat_batches(parts, self.pad_id)

    def _remote_scores(self, i: int, request: _Request, part: RolloutBatch, version: int) -> dict[str, torch.Tensor]:
        """Shard ``i``'s scores from its reward worker, scored again (on a fresh worker if that
        one died) when its chained call failed, e.g. because its generation was redone."""
        from ray.exceptions import RayActorError, RayTaskError

        assert request.scored is not None
        future = request.scored[i]
        for _ in range(self.config.ray.max_restarts + 2):
            try:
                scores, failures = self.ray.get(future)
            except RayTaskError as e:
                if isinstance(e.cause, RewardlabError):  # the reward's own clear message
                    raise e.cause from None
                if not isinstance(e.cause, RayActorError):
                    raise
            except RayActorError:
                k = i % len(self.scorers)
                self.restarts += 1
                self.ray.kill(self.scorers[k], no_restart=True)
                self.scorers[k] = self._start_scorer()
            else:
                for name, counts in failures.items():
                    self.remote_sources[name].failures.update(counts)
                return scores
            future = self._score(i, (part, version), request)
        raise RewardlabError(f"ray: reward workers were lost more than ray.max_restarts ({self.config.ray.max_restarts}) times")

    def _result(self, i: int, request: _Request, shard: tuple[int, int], future: Any) -> tuple[RolloutBatch, int]:
        """Worker ``i``'s shard: asked again from a fresh worker if this one died, and from the
        current weights if it came from a policy older than the staleness bound."""
        from ray.exceptions import RayActorError

        while True:
            try:
                part, version = self.ray.get(future)
            except RayActorError:
                self._replace(i)
            else:
                if self.version - version <= self.config.ray.max_staleness:
                    return part, version
                self.dropped += 1
            future = self._ask(i, request.prompts, request.params, request.seeds, shard)

    def _replace(self, i: int) -> None:
        self.restarts += 1
        if self.restarts > self.config.ray.max_restarts:
            raise RewardlabError(
                f"ray: rollout workers were lost {self.restarts} times (ray.max_restarts is "
                f"{self.config.ray.max_restarts}); check the cluster's nodes and memory, then resume "
                "the run with --resume"
            )
        self.ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self._start_worker()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"ray/worker_restarts": float(self.restarts), "ray/stale_dropped": float(self.dropped)}
        if self.staleness:
            out |= {
                "rollout/staleness": sum(self.staleness) / len(self.staleness),
                "rollout/staleness_max": float(max(self.staleness)),
            }
        self.staleness = []
        return out

    def close(self) -> None:
        for worker in self.workers + self.scorers:
            self.ray.kill(worker, no_restart=True)
        self.workers, self.scorers = [], []
        self.cluster.close()


def _key(prompts: list[str], params: SamplingParams, seeds: list[int]) -> tuple[Any, ...]:
    return (tuple(prompts), params, tuple(seeds))
