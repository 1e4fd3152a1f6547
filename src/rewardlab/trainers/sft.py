"""Supervised fine-tuning on prompt/completion pairs: cross-entropy on completion tokens only.

The quickstart uses it to warm-start the built-in model from a small fixed set of
demonstrations, so that RL has signal to work with.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.config import SFTConfig
from rewardlab.data.prompts import Row, demonstrations, prompt_source
from rewardlab.data.tasks import make_task
from rewardlab.errors import ConfigError
from rewardlab.models.loading import export_model, load_policy
from rewardlab.rewards import build_reward_sources
from rewardlab.tracking import check_sinks, close_all, make_sinks, write_report
from rewardlab.trainers.common import (
    FINAL_MODEL,
    BadSteps,
    Checkpoints,
    GracefulStop,
    clip_and_step,
    log_metrics,
    make_optimizer,
    make_scheduler,
    out_of_time,
    resume_step,
    save_if_due,
    save_run_config,
    seed_everything,
    start_run_dir,
)
from rewardlab.trainers.evaluate import evaluate, write_samples

IGNORE = -100


@dataclass
class SFTResult:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0  # bad dataset rows left out because data.skip_bad_rows is on


def encode_pair(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion + EOS, and labels that are IGNORE on the prompt.

    Prompt and completion are tokenized separately, exactly as RL sees them (a tokenized
    prompt followed by generated tokens), so SFT teaches the same token boundaries.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


def collate(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(examples):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return ids, mask, labels


def sft_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def train_sft(
    config: SFTConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> SFTResult:
    """Fine-tune ``config.model`` on the demonstrations (or continue the run in ``resume``
    from its newest checkpoint); the model is saved in ``final/``."""
    run_dir = start_run_dir(config, resume, "sft", "train.epochs")
    seed_everything(config.seed)
    model, tokenizer = load_policy(config.model, seed=config.seed)
    examples, skipped = sft_examples(config, tokenizer)
    optimizer = make_optimizer(model.parameters(), config.train.optim)
    per_epoch = -(-len(examples) // config.train.batch_size)
    total = config.train.epochs * per_epoch
    scheduler = make_scheduler(optimizer, config.train.optim, total)
    start = resume_step(run_dir, resume, model, optimizer, scheduler)
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    evaluator = _evaluator(config, tokenizer, run_dir)
    sinks = make_sinks(
        config.logging.sinks, run_dir, config.model_dump(mode="json"),
        resume_from_step=start if resume is not None else None,
    )
    result = SFTResult(run_dir, skipped_rows=skipped)
    if on_start:
        on_start(start, total)
    # Every epoch's order comes from one seeded stream, so a resumed run replays the orders
    # of the epochs it has done and skips their finished batches.
    order_rng = random.Random(config.seed)
    step = 0
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
    checkpoints = Checkpoints(run_dir, config.checkpoint.every, config.checkpoint.keep, stop)
    bad_steps = BadSteps(config.train.optim.max_bad_steps)
    try:
        if evaluator and start == 0:
            result.first_eval = evaluator(model, 0)
            log_metrics(sinks, 0, result.first_eval, None)  # not live: it would sit on the bar all run
        started = time.perf_counter()  # max_seconds counts training, not the first evaluation
        model.train()
        for _epoch in range(config.train.epochs):
            order = list(range(len(examples)))
            order_rng.shuffle(order)
            for lo in range(0, len(order), config.train.batch_size):
                if step < start:
                    step += 1
                    continue
                chunk = [examples[i] for i in order[lo : lo + config.train.batch_size]]
                loss = sft_loss(model, *collate(chunk, tokenizer.pad_token_id))
                loss.backward()
                grad_norm = clip_and_step(model, optimizer, scheduler, config.train.optim.max_grad_norm)
                step += 1
                metrics = {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]}
                metrics |= bad_steps.observe(grad_norm, step)
                if evaluator and config.eval.every and step % config.eval.every == 0:
                    metrics |= evaluator(model, step)
                log_metrics(sinks, step, metrics, on_step)
                save_if_due(checkpoints, model, optimizer, scheduler, step, total)
                if out_of_time(started, config.train.max_seconds):
                    break
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.steps = step
        if evaluator:
            result.last_eval = evaluator(model, step)
            log_metrics(sinks, step, result.last_eval, None)
    finally:
        stop.close()
        close_all(sinks)
    export_model(model, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def sft_examples(config: SFTConfig, tokenizer: Any) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Token ids and labels of every demonstration, and how many bad rows were skipped. With
    an ``agent:`` section, the environment's expert plays the task's ``sft`` rows."""
    if config.agent is not None:
        from rewardlab.agents.trainer import demonstration_examples

        if config.data.path is not None:  # your own rows (each once): the expert plays every one
            source = prompt_source(config.data, tokenizer, config.seed)
            return demonstration_examples(source.rows, config.agent, tokenizer, config.seed), source.skipped
        if config.data.task is None or config.data.num_examples is None:
            raise ConfigError(
                "data: SFT for an agent needs the environment's rows: data.task with "
                "data.num_examples, or data.path"
            )
        task = make_task(config.data.task, config.data.task_args)
        rows = [task.train_problem(i, seed=config.seed, stream="sft").row() for i in range(config.data.num_examples)]
        return demonstration_examples(rows, config.agent, tokenizer, config.seed), 0
    pairs, skipped = demonstrations(config.data, tokenizer, config.seed)
    return [encode_pair(tokenizer, p["prompt"], p["completion"]) for p in pairs], skipped


def _evaluator(
    config: SFTConfig, tokenizer: Any, run_dir: Path
) -> Callable[[Any, int], dict[str, float]] | None:
    """Held-out evaluation for SFT runs on a task (or with ``data.eval_path``); None otherwise."""
    if config.data.task is None and config.data.eval_path is None:
        return None
    if config.agent is not None:
        return _agent_evaluator(config, tokenizer, run_dir)
    data = config.data
    # With a dataset, point path at the eval file so the SFT file is not loaded as prompts;
    # with a task, prompt_source already takes its held-out rows from the eval file.
    if data.task is None and data.eval_path is not None:
        split = config.data.eval_split or config.data.split
        data = data.model_copy(update={"path": config.data.eval_path, "eval_path": None, "split": split})
    source = prompt_source(data, tokenizer, config.seed)
    rows: list[Row] = source.heldout_rows
    sources = build_reward_sources(config.rewards, source.task)

    def run(model: Any, step: int) -> dict[str, float]:
        result = evaluate(
            model,
            tokenizer,
            rows,
            sources,
            config.eval,
            config.rollout.max_new_tokens,
            seed=config.seed,
            num_samples_saved=config.logging.samples,
        )
        if config.logging.samples:
            write_samples(run_dir, step, result.samples)
        return result.metrics  # generate() put the model back in training mode

    return run



def _agent_evaluator(config: SFTConfig, tokenizer: Any, run_dir: Path) -> Callable[[Any, int], dict[str, float]]:
    """Held-out episodes of the environment (greedy and sampled success)."""
    from rewardlab.agents.trainer import evaluate_agent, make_runtime

    rows = prompt_source(config.data, tokenizer, config.seed).heldout_rows

    def run(model: Any, step: int) -> dict[str, float]:
        runtime = make_runtime(config, model)
        out = evaluate_agent(model, tokenizer, rows, config, runtime, config.seed, run_dir, step)
        model.train()
        return out

    return run
