"""Bradley-Terry reward-model training (``rewardlab rm train``).

Each optimizer step takes ``train.batch_size`` shuffled pairs, scores both sides of
``train.micro_batch_size`` pairs per forward pass (chosen and rejected in one batch), and
accumulates the per-pair loss summed and divided by the batch's pair count, so micro-batching
does not change the gradient. With a ``strength:`` section the training pairs are first
flipped / smoothed / given adaptive margins by their preference strength
(:mod:`rewardlab.reward_models.strength`); the counts are logged at step 0 and kept in
``eval.json``. Held-out pairs are evaluated before training, every
``eval.every`` steps and at the end; the model is saved in ``final/``. The run writes
checkpoints (``checkpoint.every``), stops cleanly on SIGINT / SIGTERM and resumes exactly
(``rewardlab rm train --resume``).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.errors import final_model_hint, writing_folder
from rewardlab.reward_models.config import RewardModelConfig
from rewardlab.reward_models.data import RewardPair, heldout_reward_pairs, training_pairs
from rewardlab.reward_models.evaluate import RewardEval, evaluate_pairs
from rewardlab.reward_models.losses import bradley_terry
from rewardlab.reward_models.model import RewardModel, load_reward_model
from rewardlab.reward_models.strength import prepare_strength
from rewardlab.tracking import check_sinks, close_all, make_sinks, write_report
from rewardlab.trainers.common import (
    FINAL_MODEL,
    BadSteps,
    Checkpoints,
    GracefulStop,
    StepCallback,
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

EVAL_FILE = "eval.json"


@dataclass
class RewardModelResult:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0
    strength: dict[str, float] = field(default_factory=dict)


def train_reward_model(
    config: RewardModelConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> RewardModelResult:
    """Train a scalar reward model on ``config``'s pairs (or continue the run in ``resume``
    from its newest checkpoint); writes ``final/`` (the model), ``metrics.jsonl`` and
    ``eval.json`` (the last evaluation, with its buckets). With ``ensemble.members`` > 1 it
    trains an ensemble instead (:func:`rewardlab.reward_models.ensemble_trainer.train_ensemble`)."""
    if config.ensemble.members > 1:
        from rewardlab.reward_models.ensemble_trainer import train_ensemble

        return train_ensemble(config, resume=resume, on_start=on_start, on_step=on_step)
    run_dir = start_run_dir(config, resume, "rm", "train.epochs")
    seed_everything(config.seed)
    model = load_reward_model(config.model, seed=config.seed)
    margin_column = config.loss.margin_column
    data = training_pairs(
        config.data, model.tokenizer, config.seed, margin_column, require_margin=config.loss.use_margin
    )
    held = heldout_reward_pairs(config.data, model.tokenizer, config.seed, margin_column)
    data.pairs, strength = prepare_strength(data.pairs, config.strength)
    optimizer, scheduler = make_optimization(model, len(data.pairs), config)
    start = resume_step(run_dir, resume, model, optimizer, scheduler)
    sinks = open_sinks(config, run_dir, start if resume is not None else None)
    result = RewardModelResult(run_dir, skipped_rows=data.skipped, strength=strength)

    def evaluate(step: int) -> RewardEval:
        found = evaluate_pairs(
            model, held, batch_size=config.eval.batch_size,
            bins=config.eval.calibration_bins, buckets=config.eval.buckets,
        )
        log_metrics(sinks, step, found.metrics | (strength if step == 0 else {}), None)
        return found

    if on_start:
        on_start(start, steps_per_member(len(data.pairs), config))
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
    try:
        if start == 0:
            result.first_eval = evaluate(0).metrics
        started = time.perf_counter()
        result.steps = fit(
            model, model_scorer(model), data.pairs, config, seed=config.seed, sinks=sinks, on_step=on_step,
            evaluate=lambda: evaluate_pairs(
                model, held, batch_size=config.eval.batch_size,
                bins=config.eval.calibration_bins, buckets=config.eval.buckets,
            ).metrics,
            optimization=(optimizer, scheduler),
            checkpoints=Checkpoints(run_dir, config.checkpoint.every, config.checkpoint.keep, stop, start),
        )
        result.seconds = time.perf_counter() - started
        last = evaluate(result.steps)
        result.last_eval = last.metrics
    finally:
        stop.close()
        close_all(sinks)
    with writing_folder("the final model", run_dir / FINAL_MODEL, final_model_hint(run_dir)):
        model.save(run_dir / FINAL_MODEL)
    write_eval(run_dir / EVAL_FILE, last, strength)
    write_report(run_dir)
    return result


def open_sinks(config: RewardModelConfig, run_dir: Path, resume_from_step: int | None = None) -> list[Any]:
    """Check the sinks, save the run's config, open the sinks (on resume, dropping the
    metrics logged after the checkpoint)."""
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    return make_sinks(
        config.logging.sinks, run_dir, config.model_dump(mode="json"), resume_from_step=resume_from_step
    )


def steps_per_member(pairs: int, config: RewardModelConfig) -> int:
    return config.train.epochs * -(-pairs // config.train.batch_size)


def make_optimization(trained: torch.nn.Module, pairs: int, config: RewardModelConfig) -> tuple[Any, Any]:
    """The optimizer of ``trained``'s trainable parameters and its LR schedule over one
    member's steps."""
    optimizer = make_optimizer(trained.parameters(), config.train.optim)
    return optimizer, make_scheduler(optimizer, config.train.optim, steps_per_member(pairs, config))


# Pairs -> (chosen rewards, rejected rewards), with gradients.
PairScorer = Callable[[list[RewardPair]], tuple[torch.Tensor, torch.Tensor]]


def model_scorer(model: RewardModel) -> PairScorer:
    """Both sides of the pairs in one forward pass: one padded batch of 2m texts."""

    def score(part: list[RewardPair]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [p.prompt for p in part]
        rewards = model.rewards(prompts * 2, [p.chosen for p in part] + [p.rejected for p in part])
        return rewards[: len(part)], rewards[len(part) :]

    return score


def fit(
    trained: torch.nn.Module,
    scorer: PairScorer,
    pairs: list[RewardPair],
    config: RewardModelConfig,
    *,
    seed: int,
    sinks: list[Any],
    on_step: StepCallback | None = None,
    first_step: int = 0,
    prefix: str = "",
    evaluate: Callable[[], dict[str, float]] | None = None,
    max_seconds: float | None = None,
    optimization: tuple[Any, Any] | None = None,
    checkpoints: Checkpoints | None = None,
) -> int:
    """The optimizer loop over ``pairs`` for ``train.epochs`` epochs, updating ``trained``'s
    trainable parameters; logs each step as ``first_step + n`` with keys under ``prefix``
    (an ensemble member's ``member{k}/``). Returns the number of steps taken.

    ``optimization``: the optimizer and schedule (made here when None). ``checkpoints``:
    save there and obey its stop signal; the steps before its ``start`` (restored from a
    checkpoint) are skipped, their epochs' orders replayed from the seeded stream."""
    optimizer, scheduler = optimization or make_optimization(trained, len(pairs), config)
    total = steps_per_member(len(pairs), config)
    start = checkpoints.start if checkpoints else 0
    order_rng = random.Random(seed)
    bad_steps = BadSteps(config.train.optim.max_bad_steps)
    limit = config.train.max_seconds if max_seconds is None else max_seconds
    started = time.perf_counter()
    step = 0
    trained.train()
    for _epoch in range(config.train.epochs):
        order = list(range(len(pairs)))
        order_rng.shuffle(order)
        for lo in range(0, len(order), config.train.batch_size):
            if step < start:
                step += 1
                continue
            batch = [pairs[i] for i in order[lo : lo + config.train.batch_size]]
            metrics = pair_loss_step(scorer, batch, config)
            metrics |= {
                "grad_norm": clip_and_step(trained, optimizer, scheduler, config.train.optim.max_grad_norm),
                "lr": scheduler.get_last_lr()[0],
            }
            step += 1
            metrics |= bad_steps.observe(metrics["grad_norm"], first_step + step)
            if evaluate is not None and config.eval.every and step % config.eval.every == 0:
                metrics |= evaluate()
            log_metrics(sinks, first_step + step, {prefix + k: v for k, v in metrics.items()}, on_step)
            if checkpoints is not None:
                save_if_due(checkpoints, trained, optimizer, scheduler, step, total)
            if out_of_time(started, limit):
                return step
    return step


def reward_step(model: RewardModel, batch: list[RewardPair], config: RewardModelConfig) -> dict[str, float]:
    """Forward and backward over ``batch`` in micro-batches; the caller steps the optimizer.
    Returns the batch's loss and reward statistics."""
    return pair_loss_step(model_scorer(model), batch, config)


def pair_loss_step(scorer: PairScorer, batch: list[RewardPair], config: RewardModelConfig) -> dict[str, float]:
    """:func:`reward_step` for any way of scoring pairs (a whole model, or one head on
    cached features). The per-pair loss is summed and divided by the batch's pair count, so
    micro-batching does not change the gradient."""
    micro = config.train.micro_batch_size
    total = float(len(batch))
    sums: dict[str, float] = defaultdict(float)
    for lo in range(0, len(batch), micro):
        part = batch[lo : lo + micro]
        chosen, rejected = scorer(part)
        margin = None
        if config.loss.use_margin:
            margin = torch.tensor([p.margin for p in part], dtype=chosen.dtype)
        if any(p.strength_margin for p in part):  # the adaptive margin of strength.adaptive_margin
            adaptive = torch.tensor([p.strength_margin for p in part], dtype=chosen.dtype)
            margin = adaptive if margin is None else margin + adaptive
        smoothing: float | torch.Tensor = 0.0
        if any(p.smoothing for p in part):  # strength.smooth_ambiguous
            smoothing = torch.tensor([p.smoothing for p in part], dtype=chosen.dtype)
        per_pair = bradley_terry(chosen, rejected, margin, config.loss.center_coef, smoothing)
        loss = per_pair.sum() / total
        loss.backward()
        gap = (chosen - rejected).detach()
        share = len(part) / total
        sums["loss"] += float(loss.detach())
        sums["rewards/accuracy"] += share * float((gap > 0).float().mean())
        sums["rewards/gap"] += share * float(gap.mean())
        sums["rewards/chosen"] += share * float(chosen.detach().mean())
        sums["rewards/rejected"] += share * float(rejected.detach().mean())
    return dict(sums)


def write_eval(path: Path, found: RewardEval, strength: dict[str, float] | None = None) -> None:
    """The evaluation as JSON (metrics and buckets, and the ``strength`` counts of the
    training pairs when preference strength was applied), written atomically."""
    import json

    payload: dict[str, Any] = {
        "metrics": found.metrics,
        "bucket_by": found.bucket_by,
        "buckets": [vars(b) for b in found.buckets],
    }
    if strength:
        payload["strength"] = strength
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
