"""Reward workers: Ray actors that score completions as soon as a rollout worker has made
them, so expensive rewards (sandboxed code, LLM judges, user functions that call out) run in
parallel with the rest of generation, and in asynchronous mode with the update too.

A scoring call is chained on its generation call's result inside Ray (the actor receives the
generated batch directly), so the trainer process does not wait in between. Only rewards
without state run there: a reward that remembers generations (novelty), keeps a state in
checkpoints, or reports its own metrics (a reward-model ensemble's disagreement) stays in
the trainer process, where its state lives.
"""

from __future__ import annotations

from typing import Any

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig
from rewardlab.data.tasks import Task
from rewardlab.rewards import RewardSource, build_reward_sources, drain_source_failures, score_rows


def is_remote_capable(source: RewardSource) -> bool:
    """Whether a source can be scored on another process without losing anything."""
    return not any(callable(getattr(source.fn, name, None)) for name in ("state_dict", "observe", "drain_metrics"))


class RewardWorker:
    """The actor: the run's stateless reward sources and the tokenizer to decode completions."""

    def __init__(self, config: dict[str, Any], task: Task | None, names: list[str]):
        from rewardlab.models.loading import load_tokenizer, resolve_model_path

        run = RunConfig.model_validate(config)
        self.tokenizer = load_tokenizer(resolve_model_path(run.model.name, seed=run.seed))
        self.sources = [s for s in build_reward_sources(run.rewards, task) if s.name in names]

    def score(
        self, generated: tuple[RolloutBatch, int], rows: list[dict[str, Any]], n: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
        """Scores of one generated shard, and each source's failure counts for it."""
        batch, _ = generated
        completions = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        scores = score_rows(self.sources, rows, completions, n)
        return scores, {s.name: dict(drain_source_failures(s)) for s in self.sources}
