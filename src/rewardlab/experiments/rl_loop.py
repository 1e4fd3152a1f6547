"""A bare online-RL loop for the RL reproductions, built from the trainer's own stages.

``rewardlab.trainers.online.train`` writes a run folder, checkpoints and evaluations, and
gives a caller only each step's metrics. The reproductions need less (no files) and more:
the batch itself (log-probs, advantages) and the policy before and after each update. So this
module drives the same stage functions the trainer calls, in the same order: ``collect``
(rollout and scoring), ``prepare`` (old and reference log-probs), ``estimate_advantages`` and
the learner's ``update``, with the same per-step seeds.

The trainer's own reward shaping applies: the source transforms (``rewards[].transforms``,
e.g. ``par``, with the dataset's ``reference_reward`` column) and the algorithm's
``reward_transforms`` (e.g. ``unlikely``) reach the advantage through ``collect``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig, SFTConfig, parse_config
from rewardlab.data.prompts import PromptSource, Row, prompt_source
from rewardlab.models.loading import load_policy
from rewardlab.rewards import RewardSource, score_rows
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
from rewardlab.trainers import online
from rewardlab.trainers.common import make_optimizer, make_scheduler, seed_everything, step_seed
from rewardlab.trainers.learner import make_reference, update


@dataclass
class Loop:
    """Everything one RL run carries from step to step."""

    config: RunConfig
    policy: Any
    tokenizer: Any
    prompts: PromptSource
    sources: list[RewardSource]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: online.AlgorithmState
    reference: Any | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def make_loop(config: RunConfig) -> Loop:
    """Load the policy, prompts, rewards and optimizer of ``config`` (no run folder)."""
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed)
    sources = online.make_sources(config, prompts)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    scheduler = make_scheduler(optimizer, config.train.optim, online.optimizer_steps(config))
    kl = config.algorithm.kl
    assert kl is not None and kl.coef is not None
    reference = make_reference(policy) if kl.coef > 0 else None
    state = online.AlgorithmState.start(config)
    return Loop(config, policy, tokenizer, prompts, sources, optimizer, scheduler, state, reference)


Hook = Callable[[int, RolloutBatch, Loop], Any]


def train_step(
    loop: Loop,
    step: int,
    before_update: Hook | None = None,
    after_update: Callable[[int, RolloutBatch, Loop, Any], dict[str, float]] | None = None,
) -> tuple[RolloutBatch, dict[str, float]]:
    """One step, as ``online.train`` runs it: rollout, score, shape, prepare, advantages,
    update. ``before_update`` sees the
    batch ready for the update; whatever it returns is given to ``after_update``, whose
    metrics join the step's."""
    config = loop.config
    torch.manual_seed(step_seed(config.seed, step))
    batch, metrics = online.collect(
        loop.policy, loop.tokenizer, loop.prompts, loop.sources, config, loop.state, step
    )
    assert batch.rewards is not None
    metrics["reward/advantage_input"] = float(batch.rewards.mean())  # shaped, as trained on
    metrics |= online.prepare(loop.policy, loop.reference, None, batch, config, loop.state)
    metrics |= online.estimate_advantages(batch, config, loop.state)
    seen = before_update(step, batch, loop) if before_update else None
    coefs = loop.state.coefficients()
    metrics |= update(loop.policy, loop.optimizer, loop.scheduler, batch, config, step, coefs)
    if after_update:
        metrics |= after_update(step, batch, loop, seen)
    metrics["step"] = float(step)
    loop.history.append(metrics)
    return batch, metrics


@torch.no_grad()
def sample_scores(
    policy: Any,
    tokenizer: Any,
    rows: list[Row],
    sources: list[RewardSource],
    n: int,
    max_new_tokens: int,
    *,
    seed: int,
    temperature: float = 1.0,
    chunk: int = 4096,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``n`` samples for every row, scored by every source: ({source: [rows, n]}, texts).
    The caller's RNG is left untouched."""
    per_call = max(1, chunk // n)
    scores: dict[str, list[torch.Tensor]] = {s.name: [] for s in sources}
    texts: list[str] = []
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for lo in range(0, len(rows), per_call):
            part = rows[lo : lo + per_call]
            batch = generate(policy, tokenizer, [r["prompt"] for r in part], params)
            completions = decode_completions(tokenizer, batch)
            texts += completions
            found = score_rows(sources, part, completions, n)
            for name, value in found.items():
                scores[name].append(value.view(len(part), n))
    return {k: torch.cat(v) for k, v in scores.items()}, texts


def last(history: list[dict[str, float]], key: str, k: int = 10) -> float:
    """Mean of ``key`` over the last ``k`` steps that logged it."""
    values = [h[key] for h in history if key in h][-k:]
    return sum(values) / max(len(values), 1)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def warm_start(
    folder: Path,
    pairs: list[dict[str, str]] | None = None,
    *,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    task: str | None = None,
    task_args: dict[str, Any] | None = None,
    num_examples: int = 256,
) -> Path:
    """SFT of ``builtin:tiny`` with rewardlab's ``train_sft``, on prompt/completion ``pairs``
    (written to ``folder/sft.jsonl``) or on a built-in ``task``'s demonstrations; returns the
    folder of the final model."""
    from rewardlab.trainers.sft import train_sft

    data: dict[str, Any]
    if pairs is not None:
        data = {"path": str(write_jsonl(folder / "sft.jsonl", pairs))}
    else:
        data = {
            "task": task,
            "task_args": task_args or {},
            "num_examples": num_examples,
            "heldout_size": 8,  # SFT evaluates before and after; keep that cheap
        }
    config = parse_config(
        SFTConfig,
        {
            "seed": seed,
            "run_dir": str(folder / "sft"),
            "data": data,
            "train": {"epochs": epochs, "batch_size": batch_size, "optim": {"lr": lr}},
            "eval": {"every": 0, "pass_k": 1},
            "logging": {"samples": 0},
        },
    )
    return train_sft(config).run_dir / "final"
