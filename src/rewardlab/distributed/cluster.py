"""Joining or starting the Ray cluster of a run, and shutting down only what the run started."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from rewardlab.config import RayConfig
from rewardlab.errors import RewardlabError


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RewardlabError(
            "engine: ray needs the ray package; install it with pip install 'rewardlab[ray]' "
            "(or run with engine: local)"
        ) from None
    return ray


@dataclass
class Cluster:
    """The Ray connection of one run; ``started`` when the run made a local cluster itself."""

    ray: Any
    started: bool
    handlers: dict[int, Any] = field(default_factory=dict)  # signal handlers before ray.init

    def close(self) -> None:
        if self.ray.is_initialized() and self.started:
            self.ray.shutdown()
            restore_signals(self.handlers)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def saved_signals() -> dict[int, Any]:
    return {s: signal.getsignal(s) for s in _SIGNALS}


def restore_signals(handlers: dict[int, Any]) -> None:
    """``ray.init`` installs its own SIGTERM handler in the driver, and it outlives
    ``ray.shutdown``; a library call must leave the caller's handlers as it found them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)


def connect(config: RayConfig) -> Cluster:
    """Join ``config.address`` (a running cluster) or start a local cluster for this run.

    Workers import rewardlab from the same environment as the driver: on a multi-node cluster
    every node needs rewardlab installed (docs/ray.md). Worker output is not forwarded to the
    driver, whose stdout belongs to the CLI's progress display.
    """
    ray = import_ray()
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        return Cluster(ray, started=False)
    options: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    handlers = saved_signals()
    if config.address is not None:
        try:
            ray.init(address=config.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RewardlabError(
                f"ray.address: cannot join the Ray cluster at '{config.address}': {e}; start one with "
                "'ray start --head' on the head node, or remove ray.address to start a local cluster"
            ) from None
        return Cluster(ray, started=True, handlers=handlers)
    ray.init(num_cpus=config.num_cpus, **options)
    return Cluster(ray, started=True, handlers=handlers)


def check_capacity(ray: Any, config: RayConfig) -> None:
    """Refuse a placement the cluster can never satisfy (the actors would wait forever)."""
    actors = config.rollout_workers + config.learners - 1 + config.reward_workers
    wanted = actors * config.cpus_per_worker
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if wanted > have:
        raise RewardlabError(
            f"ray: {config.rollout_workers} rollout workers, {config.reward_workers} reward workers and "
            f"{config.learners - 1} learner actors at "
            f"ray.cpus_per_worker {config.cpus_per_worker} need {wanted:g} CPUs, the cluster has {have:g}; "
            "lower ray.cpus_per_worker (e.g. 0.5) or the worker counts, or add nodes"
        )
