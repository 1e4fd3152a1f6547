"""The rollout interface the trainer talks to: a local engine (the policy in this process) or
a distributed one (``rewardlab.distributed``: Ray actors), and later a GPU engine such as vLLM.

An engine turns prompts into a ``RolloutBatch`` with the sampling parameters it is given, and
receives the policy's weights after every update (``sync``). Greedy decoding for evaluation and
the ReMax baseline stays on the trainer's own policy, which an engine's copies always equal in
synchronous mode.
"""

from __future__ import annotations

from typing import Any, Protocol

from rewardlab.batch import RolloutBatch
from rewardlab.rollout.hf import SamplingParams, generate
from rewardlab.rollout.seeded import generate_seeded


class RolloutEngine(Protocol):
    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> RolloutBatch:
        """``params.n`` completions per prompt, rows of a prompt adjacent with group ids
        0..len(prompts)-1; ``seeds`` (one per prompt) are used by per-prompt seeding. An
        engine that scores (Ray reward workers) gets the prompts' dataset ``rows`` and returns
        the scores it made in ``batch.scores``; the trainer scores the rest."""
        ...

    def sync(self, policy: Any, version: int) -> None:
        """The policy after update ``version``: later generations sample from it."""
        ...

    def prefetch(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> None:
        """Start a later ``generate`` call's work now (an asynchronous engine); a later call
        with the same arguments returns its result."""
        ...

    def metrics(self) -> dict[str, float]:
        """What the engine measured since the last call (staleness, restarts)."""
        ...

    def close(self) -> None: ...


class LocalRollout:
    """Generation with the trainer's own policy object (nothing to sync)."""

    def __init__(self, policy: Any, tokenizer: Any, per_prompt: bool):
        self.policy = policy
        self.tokenizer = tokenizer
        self.per_prompt = per_prompt

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> RolloutBatch:
        if self.per_prompt:
            return generate_seeded(self.policy, self.tokenizer, prompts, params, seeds)
        return generate(self.policy, self.tokenizer, prompts, params)

    def sync(self, policy: Any, version: int) -> None:
        return None

    def prefetch(
        self, prompts: list[str], params: SamplingParams, seeds: list[int], rows: list[dict[str, Any]] | None = None
    ) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        return None
