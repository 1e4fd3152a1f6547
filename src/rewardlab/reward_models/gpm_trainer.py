"""Training a general preference model (:mod:`rewardlab.reward_models.gpm`) on pairs.

The run is a reward-model run (:class:`RewardModelConfig`: backbone, data, optimizer, eval,
logging; the same pairs as ``rm train``) plus a ``gpm`` section (:class:`GPMHeadConfig`:
``dim`` = 2k, ``normalize``, ``scales``, ``temperature``). The loop is the reward-model
trainer's: each optimizer step takes ``train.batch_size`` shuffled pairs, embeds both sides
of ``train.micro_batch_size`` pairs per forward pass, and accumulates the per-pair loss
``-log sigmoid(s(chosen, rejected) / temperature)`` summed and divided by the batch's pair
count. Held-out pairs are evaluated before training, every ``eval.every`` steps and at the
end (``eval/accuracy``: s(chosen, rejected) > 0, a tie counting 1/2); the model is saved in
``final/`` and the last evaluation in ``eval.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field, model_validator

from rewardlab.errors import final_model_hint, writing_folder
from rewardlab.reward_models.config import RewardModelConfig
from rewardlab.reward_models.data import RewardPair, heldout_reward_pairs, training_pairs
from rewardlab.reward_models.evaluate import correct
from rewardlab.reward_models.gpm import GeneralPreferenceModel, GPMHeadConfig, gpm_loss, load_gpm
from rewardlab.reward_models.trainer import EVAL_FILE, open_sinks
from rewardlab.tracking import close_all, write_report
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
    seed_everything,
    start_run_dir,
)


class GPMConfig(RewardModelConfig):
    """A reward-model run whose model is a general preference model (``gpm`` section). The
    Bradley-Terry loss terms (``loss.use_margin``, ``loss.center_coef``) do not apply."""

    gpm: GPMHeadConfig = Field(default_factory=GPMHeadConfig)

    @model_validator(mode="after")
    def _no_bt_terms(self) -> GPMConfig:
        if self.loss.use_margin or self.loss.center_coef:
            raise ValueError(
                "loss.use_margin / loss.center_coef: Bradley-Terry terms, not used by a general "
                "preference model; remove them"
            )
        return self


@dataclass
class GPMResult:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0


def train_gpm(
    config: GPMConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> GPMResult:
    """Train a GPM on ``config``'s pairs (or continue the run in ``resume`` from its newest
    checkpoint); writes ``final/`` (the model), ``metrics.jsonl`` and ``eval.json`` (the last
    evaluation)."""
    run_dir = start_run_dir(config, resume, "gpm", "train.epochs")
    seed_everything(config.seed)
    model = load_gpm(config.model, config.gpm, seed=config.seed)
    data = training_pairs(config.data, model.tokenizer, config.seed, config.loss.margin_column, require_margin=False)
    held = heldout_reward_pairs(config.data, model.tokenizer, config.seed, config.loss.margin_column)
    optimizer = make_optimizer(model.parameters(), config.train.optim)
    per_epoch = -(-len(data.pairs) // config.train.batch_size)
    total = config.train.epochs * per_epoch
    scheduler = make_scheduler(optimizer, config.train.optim, total)
    start = resume_step(run_dir, resume, model, optimizer, scheduler)
    sinks = open_sinks(config, run_dir, start if resume is not None else None)
    result = GPMResult(run_dir, skipped_rows=data.skipped)

    if on_start:
        on_start(start, total)
    # Every epoch's order comes from one seeded stream, so a resumed run replays the orders
    # of the epochs it has done and skips their finished batches.
    order_rng = random.Random(config.seed)
    step = 0
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
    bad_steps = BadSteps(config.train.optim.max_bad_steps)
    checkpoints = Checkpoints(run_dir, config.checkpoint.every, config.checkpoint.keep, stop, start)
    try:
        if start == 0:
            result.first_eval = evaluate_gpm(model, held, batch_size=config.eval.batch_size)
            log_metrics(sinks, 0, result.first_eval, None)
        started = time.perf_counter()
        model.train()
        for _epoch in range(config.train.epochs):
            order = list(range(len(data.pairs)))
            order_rng.shuffle(order)
            for lo in range(0, len(order), config.train.batch_size):
                if step < start:
                    step += 1
                    continue
                batch = [data.pairs[i] for i in order[lo : lo + config.train.batch_size]]
                metrics = gpm_step(model, batch, config.train.micro_batch_size)
                metrics |= {
                    "grad_norm": clip_and_step(model, optimizer, scheduler, config.train.optim.max_grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                }
                step += 1
                metrics |= bad_steps.observe(metrics["grad_norm"], step)
                if config.eval.every and step % config.eval.every == 0:
                    metrics |= evaluate_gpm(model, held, batch_size=config.eval.batch_size)
                log_metrics(sinks, step, metrics, on_step)
                save_if_due(checkpoints, model, optimizer, scheduler, step, total)
                if out_of_time(started, config.train.max_seconds):
                    break
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.steps = step
        last = evaluate_gpm(model, held, batch_size=config.eval.batch_size)
        log_metrics(sinks, step, last, None)
        result.last_eval = last
    finally:
        stop.close()
        close_all(sinks)
    with writing_folder("the final model", run_dir / FINAL_MODEL, final_model_hint(run_dir)):
        model.save(run_dir / FINAL_MODEL)
    tmp = (run_dir / EVAL_FILE).with_suffix(".tmp")
    tmp.write_text(json.dumps({"metrics": last}, indent=2) + "\n")
    tmp.replace(run_dir / EVAL_FILE)
    write_report(run_dir)
    return result


def gpm_step(model: GeneralPreferenceModel, batch: list[RewardPair], micro: int) -> dict[str, float]:
    """Forward and backward over ``batch`` in micro-batches of ``micro`` pairs; the caller
    steps the optimizer. Returns the batch's loss, accuracy and mean score."""
    total = float(len(batch))
    sums: dict[str, float] = defaultdict(float)
    for lo in range(0, len(batch), micro):
        part = batch[lo : lo + micro]
        prompts = [p.prompt for p in part]
        # Both sides in one forward pass: one padded batch of 2m texts.
        v = model.embed(prompts * 2, [p.chosen for p in part] + [p.rejected for p in part])
        s = model.score_pairs(v[: len(part)], v[len(part) :])
        loss = gpm_loss(s, model.temperature).sum() / total
        loss.backward()
        share = len(part) / total
        s = s.detach()
        sums["loss"] += float(loss.detach())
        sums["gpm/accuracy"] += share * float(correct(s).mean())
        sums["gpm/score"] += share * float(s.mean())
    return dict(sums)


def evaluate_gpm(model: GeneralPreferenceModel, pairs: list[RewardPair], *, batch_size: int = 64) -> dict[str, float]:
    """``eval/accuracy`` (s(chosen, rejected) > 0; a tie 1/2), ``eval/loss`` (mean NLL),
    ``eval/score`` (mean s) and ``eval/brier`` (mean (1 - P(chosen beats rejected))^2)."""
    if not pairs:
        return {}
    s = model.scores([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs], batch_size)
    p = torch.sigmoid(s / model.temperature)
    return {
        "eval/accuracy": float(correct(s).mean()),
        "eval/loss": float(gpm_loss(s, model.temperature).mean()),
        "eval/score": float(s.mean()),
        "eval/brier": float(((1 - p) ** 2).mean()),
    }
