"""Offline preference optimization (DPO and its family): one trainer, one loss registry.

The data are pairs (``prompt`` / ``chosen`` / ``rejected``), unpaired rows (``prompt`` /
``completion`` / ``label``, KTO) or ranked lists (``prompt`` / ``completions`` / ``scores``,
LiPO); ``trainers/preference_views.py`` turns each into the fields the losses name. Each step
computes the policy's log-probs of every completion of its examples in one forward pass per
micro-batch (the reference's were computed once, before training) and calls every configured
loss of ``PREFERENCE_LOSSES``; several losses are summed with their weights. Pairwise losses
see one row per pair; unpaired losses (KTO) also run on pairs, seeing a desirable and an
undesirable completion; listwise losses (LiPO) see a pair as a list of two. Per-row losses
are summed and divided by the batch's row count, so micro-batching does not change the
gradient.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES
from rewardlab.batch import RolloutBatch
from rewardlab.config import PreferenceConfig
from rewardlab.data.preferences import Pair, heldout_examples, load_preference_data
from rewardlab.data.prompts import prompt_source
from rewardlab.models.loading import export_model, load_policy
from rewardlab.models.logprobs import batch_logprobs, forward_completion_logits, token_logprobs
from rewardlab.rewards import build_reward_sources
from rewardlab.rollout.hf import SamplingParams, generate
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
from rewardlab.trainers.evaluate import evaluate, write_samples
from rewardlab.trainers.learner import make_reference, reference_mode
from rewardlab.trainers.preference_views import (
    Cache,
    Example,
    Order,
    View,
    cached_logprobs,
    check_losses_fit,
    comparison_pairs,
    gold_rows,
    ordered_batch,
    pair_batch,
    row_order,
    stack_cached,
    view_fields,
)
from rewardlab.trainers.token_rewards import token_reward_fields, token_rewards


@dataclass
class PreferenceResult:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0


# --------------------------------------------------------------------------- the loop




def train_preference(
    config: PreferenceConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> PreferenceResult:
    """Optimize ``config.model`` on the preference data (or continue the run in ``resume``
    from its newest checkpoint); the model is saved in ``final/``."""
    run_dir = start_run_dir(config, resume, "preference", "train.epochs")
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    data = load_preference_data(config.data, tokenizer, config.seed)
    view: View = data.format  # type: ignore[assignment]
    examples = data.examples
    check_losses_fit(config.preference.losses, view, token_reward_fields(config))
    held_examples = heldout_examples(config.data, tokenizer, config.seed)
    held = comparison_pairs(held_examples)
    reference = make_reference(policy)
    micro = config.train.micro_batch_size
    ref_cache = cached_logprobs(
        reference, tokenizer, examples, micro, config.rollout.temperature, as_reference=True
    )
    extras = token_rewards(config, reference, tokenizer, examples, ref_cache)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    per_epoch = -(-len(examples) // config.train.batch_size)
    total = config.train.epochs * per_epoch
    scheduler = make_scheduler(optimizer, config.train.optim, total)
    start = resume_step(run_dir, resume, policy, optimizer, scheduler)
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    rows = gold_rows(held_examples) if config.data.task is None else None
    evaluator = _evaluator(config, tokenizer, reference, held, run_dir, rows)
    sinks = make_sinks(
        config.logging.sinks, run_dir, config.model_dump(mode="json"),
        resume_from_step=start if resume is not None else None,
    )
    result = PreferenceResult(run_dir, skipped_rows=data.skipped)
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
        if start == 0:
            result.first_eval = evaluator(policy, 0)
            log_metrics(sinks, 0, result.first_eval, None)
        started = time.perf_counter()
        policy.train()
        for _epoch in range(config.train.epochs):
            order = list(range(len(examples)))
            order_rng.shuffle(order)
            for lo in range(0, len(order), config.train.batch_size):
                if step < start:
                    step += 1
                    continue
                index = order[lo : lo + config.train.batch_size]
                metrics = preference_step(policy, tokenizer, examples, ref_cache, index, config, view, extras)
                metrics |= {
                    "grad_norm": clip_and_step(policy, optimizer, scheduler, config.train.optim.max_grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                }
                step += 1
                metrics |= bad_steps.observe(metrics["grad_norm"], step)
                if config.eval.every and step % config.eval.every == 0:
                    metrics |= evaluator(policy, step)
                log_metrics(sinks, step, metrics, on_step)
                save_if_due(checkpoints, policy, optimizer, scheduler, step, total)
                if out_of_time(started, config.train.max_seconds):
                    break
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.steps = step
        result.last_eval = evaluator(policy, step)
        log_metrics(sinks, step, result.last_eval, None)
    finally:
        stop.close()
        close_all(sinks)
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def preference_step(
    policy: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    ref_cache: Cache,
    index: list[int],
    config: PreferenceConfig,
    view: View = "pairwise",
    extras: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Forward and backward over the examples ``index`` (accumulated over micro-batches of
    ``train.micro_batch_size`` examples); the caller steps the optimizer. ``extras`` are
    per-example fields (tensors indexed by example, or ``Cache`` lists of per-completion
    token tensors, which are stacked like the reference's). Returns the batch's metrics."""
    micro = config.train.micro_batch_size
    total = float(len(index))
    sums: dict[str, float] = defaultdict(float)
    for lo in range(0, len(index), micro):
        part = index[lo : lo + micro]
        order = row_order(view, examples, part)
        batch = ordered_batch(tokenizer, examples, order)
        logits = forward_completion_logits(policy, batch, config.rollout.temperature)
        token_logp = token_logprobs(logits, batch.completion_ids)
        width = token_logp.shape[1]
        ref = stack_cached(ref_cache, order, width)
        fields = view_fields(view, token_logp, ref, batch.completion_mask, [examples[i] for i in part])
        fields |= _extra_fields(extras or {}, part, order, width)
        loss = torch.zeros((), dtype=token_logp.dtype)
        for choice in config.preference.losses:
            per_row, metrics = PREFERENCE_LOSSES.call(choice.name, fields, choice.params)
            rows_per_example = per_row.shape[0] / len(part)  # 2 for unpaired losses on pairs
            loss = loss + choice.weight * per_row.sum() / (total * rows_per_example)
            for name, values in metrics.items():
                sums[f"{choice.name}/{name}"] += float(values.detach().float().sum()) / (total * rows_per_example)
        loss.backward()
        sums["loss"] += float(loss.detach())
        for name, value in _step_stats(view, fields, len(part) / total).items():
            sums[name] += value
    return dict(sums)


def _extra_fields(extras: Mapping[str, Any], part: list[int], order: Order, width: int) -> dict[str, Any]:
    """The micro-batch's slice of per-example extras. A ``Cache`` (per-completion token
    values, e.g. token rewards) is stacked in row order and, like the pairwise fields, split
    into its chosen and rejected halves under the names ``chosen_<name>`` / ``rejected_<name>``."""
    out: dict[str, Any] = {}
    for name, value in extras.items():
        if isinstance(value, torch.Tensor):
            out[name] = value[part]
            continue
        stacked = stack_cached(value, order, width)
        half = len(part)
        out[f"chosen_{name}"], out[f"rejected_{name}"] = stacked[:half], stacked[half:]
    return out


def _step_stats(view: View, fields: Mapping[str, Any], share: float) -> dict[str, float]:
    """Pairs: mean log-probs of chosen / rejected and the implicit reward's accuracy and
    margin (log-ratio to the reference, chosen minus rejected). Other views: the mean
    log-prob and log-ratio of their completions. Weighted by the micro-batch's share."""
    if view != "pairwise":
        seq = fields["list_logp"][fields["list_mask"]] if view == "listwise" else fields["logp"]
        ref = fields["list_ref_logp"][fields["list_mask"]] if view == "listwise" else fields["ref_logp"]
        return {
            "logps/mean": share * float(seq.detach().mean()),
            "rewards/log_ratio": share * float((seq - ref).detach().mean()),
        }
    chosen = (fields["chosen_logp"] - fields["ref_chosen_logp"]).detach()
    rejected = (fields["rejected_logp"] - fields["ref_rejected_logp"]).detach()
    margin = chosen - rejected
    return {
        "logps/chosen": share * float(fields["chosen_logp"].detach().mean()),
        "logps/rejected": share * float(fields["rejected_logp"].detach().mean()),
        "rewards/accuracy": share * float((margin > 0).float().mean()),
        "rewards/margin": share * float(margin.mean()),
    }


# --------------------------------------------------------------------------- evaluation


def _evaluator(
    config: PreferenceConfig,
    tokenizer: Any,
    reference: Any,
    held: list[Pair],
    run_dir: Path,
    rows: list[dict[str, str]] | None = None,
) -> Callable[[Any, int], dict[str, float]]:
    """Gold-reward evaluation on held-out prompts (``rows``: an offline file's held-out
    examples; otherwise a task's held-out problems or a prompt file's held-out rows), plus the
    preference diagnostics on held-out pairs and a sampled KL to the reference."""
    if rows:
        task = None
    else:
        source = prompt_source(config.data, tokenizer, config.seed)
        rows, task = source.heldout_rows, source.task
    sources = build_reward_sources(config.rewards, task)
    held_batch = pair_batch(tokenizer, held) if held else None
    # The reference is frozen: its sequence log-probs of the held-out pairs are computed once.
    held_ref = None
    if held_batch is not None:
        with reference_mode(reference) as frozen:
            held_ref = _sequence_logprobs(frozen, held_batch, config.rollout.temperature, config)

    def run(model: Any, step: int) -> dict[str, float]:
        result = evaluate(
            model, tokenizer, rows, sources, config.eval, config.rollout.max_new_tokens,
            seed=config.seed, num_samples_saved=config.logging.samples,
        )
        if config.logging.samples:
            write_samples(run_dir, step, result.samples)
        ranking = ranking_metrics(model, held_batch, held_ref, config) if held_batch is not None else {}
        prompts = [r["prompt"] for r in rows]
        return result.metrics | ranking | sampled_kl(model, reference, tokenizer, prompts, config)

    return run


@torch.no_grad()
def _sequence_logprobs(
    model: Any, batch: RolloutBatch, temperature: float, config: PreferenceConfig
) -> torch.Tensor:
    """Each row's summed completion log-prob under ``model`` (pass the reference inside
    ``reference_mode`` so that, with LoRA, its adapter is off)."""
    logp = batch_logprobs(model, batch, temperature, 2 * config.train.micro_batch_size)
    return (logp * batch.completion_mask.float()).sum(-1)


@torch.no_grad()
def ranking_metrics(
    model: Any, held: RolloutBatch, ref_seq: torch.Tensor, config: PreferenceConfig
) -> dict[str, float]:
    """On held-out pairs (``pair_batch`` rows, with the reference's sequence log-probs
    ``ref_seq``): how often the policy itself ranks chosen above rejected (ranking accuracy,
    "Preference Learning Algorithms Do Not Learn Preference Rankings", arXiv 2405.19534), how
    often the implicit reward does (log-ratio to the reference), and the mean implicit margin."""
    policy_seq = _sequence_logprobs(model, held, config.rollout.temperature, config)
    half = held.size // 2
    margin = (policy_seq[:half] - ref_seq[:half]) - (policy_seq[half:] - ref_seq[half:])
    return {
        "eval/ranking_accuracy": float((policy_seq[:half] > policy_seq[half:]).float().mean()),
        "eval/reward_accuracy": float((margin > 0).float().mean()),
        "eval/reward_margin": float(margin.mean()),
        "eval/logps_chosen": float(policy_seq[:half].mean()),
        "eval/logps_rejected": float(policy_seq[half:].mean()),
    }


@torch.no_grad()
def sampled_kl(
    model: Any, reference: Any, tokenizer: Any, prompts: list[str], config: PreferenceConfig
) -> dict[str, float]:
    """KL(pi || pi_ref) per completion, estimated on one sampled completion per held-out
    prompt (k1: the sum of log-ratios over the sample's tokens)."""
    if not prompts:
        return {}
    params = SamplingParams(n=1, temperature=config.eval.temperature, max_new_tokens=config.rollout.max_new_tokens)
    batch = generate(model, tokenizer, prompts, params)
    policy = _sequence_logprobs(model, batch, config.eval.temperature, config)
    with reference_mode(reference) as frozen:
        ref = _sequence_logprobs(frozen, batch, config.eval.temperature, config)
    return {"eval/kl": float((policy - ref).mean())}
