"""Offline preference optimization (DPO and its family): one trainer, one loss registry.

Each step takes a batch of pairs, computes the policy's log-probs of both completions in one
forward pass (the reference's were computed once, before training, by the same network), and
calls every configured loss of ``PREFERENCE_LOSSES`` with the fields it names; several losses
are summed with their weights. Pairwise losses see one row per pair; unpaired losses (KTO)
see each pair as a desirable and an undesirable completion; listwise losses (LiPO) see each
pair as a list of two. Per-row losses are summed and divided by the batch's row count, so
micro-batching does not change the gradient.
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

from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES
from rewardlab.batch import RolloutBatch
from rewardlab.config import PreferenceConfig
from rewardlab.data.preferences import Pair, heldout_pairs, preference_pairs
from rewardlab.data.prompts import prompt_source
from rewardlab.models.loading import export_model, load_policy
from rewardlab.models.logprobs import batch_logprobs, forward_completion_logits, token_logprobs
from rewardlab.rewards import build_reward_sources
from rewardlab.rollout.hf import SamplingParams, generate, tokenize_prompts
from rewardlab.tracking import check_sinks, close_all, make_sinks, write_report
from rewardlab.trainers.common import (
    FINAL_MODEL,
    StepCallback,
    clip_and_step,
    log_metrics,
    make_optimizer,
    make_run_dir,
    make_scheduler,
    out_of_time,
    save_run_config,
    seed_everything,
)
from rewardlab.trainers.evaluate import evaluate, write_samples
from rewardlab.trainers.learner import make_reference, reference_mode


@dataclass
class PreferenceResult:
    run_dir: Path
    steps: int = 0
    seconds: float = 0.0
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0


# --------------------------------------------------------------------------- batches


def pair_batch(tokenizer: Any, pairs: list[Pair]) -> RolloutBatch:
    """The chosen completions (rows 0..B-1) then the rejected ones (B..2B-1), each after its
    prompt, in the online loop's layout (left-padded prompts, right-padded completions, EOS
    closing every completion): the same log-prob code serves both trainers."""
    prompts = [p.prompt for p in pairs] * 2
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    group = torch.arange(len(pairs)).repeat(2)
    return RolloutBatch(prompt_ids, prompt_mask, ids, mask, group, torch.zeros(len(encoded), dtype=torch.bool))


def loss_fields(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Every field a preference loss may name, from the [2B, T] token log-probs of a pair batch
    (policy, reference) and its mask: pairwise sums and lengths, token-level tensors, the
    unpaired view (KTO) and the two-item listwise view (LiPO)."""
    half = token_logp.shape[0] // 2
    m = mask.to(token_logp.dtype)
    seq = (token_logp * m).sum(-1)
    ref_seq = (ref_token_logp * m).sum(-1)
    lengths = m.sum(-1)
    fields: dict[str, Any] = {
        "chosen_logp": seq[:half],
        "rejected_logp": seq[half:],
        "ref_chosen_logp": ref_seq[:half],
        "ref_rejected_logp": ref_seq[half:],
        "chosen_len": lengths[:half],
        "rejected_len": lengths[half:],
        "chosen_token_logp": token_logp[:half],
        "rejected_token_logp": token_logp[half:],
        "ref_chosen_token_logp": ref_token_logp[:half],
        "ref_rejected_token_logp": ref_token_logp[half:],
        "chosen_mask": mask[:half],
        "rejected_mask": mask[half:],
        # unpaired: every chosen completion is desirable, every rejected one is not
        "logp": seq,
        "ref_logp": ref_seq,
        "label": torch.arange(2 * half) < half,
        # listwise: each pair is a list of two, scored 1 (chosen) and 0 (rejected)
        "list_logp": torch.stack([seq[:half], seq[half:]], dim=1),
        "list_ref_logp": torch.stack([ref_seq[:half], ref_seq[half:]], dim=1),
        "list_scores": torch.tensor([[1.0, 0.0]]).expand(half, 2),
        "list_mask": torch.ones(half, 2, dtype=torch.bool),
    }
    # KTO's reference point: the batch's detached estimate of KL(pi || pi_ref), clamped at 0
    # (TRL estimates it on mismatched prompt/completion pairs; here on the batch's own rows).
    fields["kl"] = (seq - ref_seq).detach().mean().clamp(min=0)
    return fields


# --------------------------------------------------------------------------- the loop


def train_preference(
    config: PreferenceConfig,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> PreferenceResult:
    """Optimize ``config.model`` on the preference pairs; the model is saved in ``final/``."""
    run_dir = make_run_dir(config.run_dir, "preference")
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    pairs, skipped = preference_pairs(config.data, tokenizer, config.seed)
    held = heldout_pairs(config.data, tokenizer, config.seed)
    reference = make_reference(policy)
    micro = config.train.micro_batch_size
    ref_logp = _reference_logprobs(reference, tokenizer, pairs, micro, config.rollout.temperature)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    per_epoch = -(-len(pairs) // config.train.batch_size)
    total = config.train.epochs * per_epoch
    scheduler = make_scheduler(optimizer, config.train.optim, total)
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    evaluator = _evaluator(config, tokenizer, reference, held, run_dir)
    sinks = make_sinks(config.logging.sinks, run_dir, config.model_dump(mode="json"))
    result = PreferenceResult(run_dir, skipped_rows=skipped)
    if on_start:
        on_start(0, total)
    order_rng = random.Random(config.seed)
    step = 0
    try:
        result.first_eval = evaluator(policy, 0)
        log_metrics(sinks, 0, result.first_eval, None)
        started = time.perf_counter()
        policy.train()
        for _epoch in range(config.train.epochs):
            order = list(range(len(pairs)))
            order_rng.shuffle(order)
            for lo in range(0, len(order), config.train.batch_size):
                index = order[lo : lo + config.train.batch_size]
                metrics = preference_step(policy, tokenizer, pairs, ref_logp, index, config)
                metrics |= {
                    "grad_norm": clip_and_step(policy, optimizer, scheduler, config.train.optim.max_grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                }
                step += 1
                if config.eval.every and step % config.eval.every == 0:
                    metrics |= evaluator(policy, step)
                log_metrics(sinks, step, metrics, on_step)
                if out_of_time(started, config.train.max_seconds):
                    break
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.steps = step
        result.last_eval = evaluator(policy, step)
        log_metrics(sinks, step, result.last_eval, None)
    finally:
        close_all(sinks)
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def preference_step(
    policy: Any,
    tokenizer: Any,
    pairs: list[Pair],
    ref_logp: list[torch.Tensor],
    index: list[int],
    config: PreferenceConfig,
) -> dict[str, float]:
    """Forward and backward over one batch of pairs (accumulated over micro-batches); the
    caller steps the optimizer. Returns the batch's metrics."""
    micro = config.train.micro_batch_size
    total_pairs = float(len(index))
    sums: dict[str, float] = defaultdict(float)
    for lo in range(0, len(index), micro):
        part = index[lo : lo + micro]
        batch = pair_batch(tokenizer, [pairs[i] for i in part])
        logits = forward_completion_logits(policy, batch, config.rollout.temperature)
        token_logp = token_logprobs(logits, batch.completion_ids)
        ref = _stack_ref([ref_logp[i] for i in part], token_logp.shape[1])
        fields = loss_fields(token_logp, ref, batch.completion_mask)
        loss = torch.zeros((), dtype=token_logp.dtype)
        for choice in config.preference.losses:
            per_row, metrics = PREFERENCE_LOSSES.call(choice.name, fields, choice.params)
            rows_per_pair = per_row.shape[0] / len(part)  # 1 (pairwise, listwise) or 2 (unpaired)
            loss = loss + choice.weight * per_row.sum() / (total_pairs * rows_per_pair)
            for name, values in metrics.items():
                sums[f"{choice.name}/{name}"] += float(values.detach().float().sum()) / (total_pairs * rows_per_pair)
        loss.backward()
        sums["loss"] += float(loss.detach())
        for name, value in _pair_stats(fields, len(part) / total_pairs).items():
            sums[name] += value
    return dict(sums)


def _pair_stats(fields: dict[str, Any], share: float) -> dict[str, float]:
    """Mean log-probs of chosen / rejected and the implicit reward's accuracy and margin
    (log-ratio to the reference, chosen minus rejected), weighted by the micro-batch's share."""
    chosen = (fields["chosen_logp"] - fields["ref_chosen_logp"]).detach()
    rejected = (fields["rejected_logp"] - fields["ref_rejected_logp"]).detach()
    margin = chosen - rejected
    return {
        "logps/chosen": share * float(fields["chosen_logp"].detach().mean()),
        "logps/rejected": share * float(fields["rejected_logp"].detach().mean()),
        "rewards/accuracy": share * float((margin > 0).float().mean()),
        "rewards/margin": share * float(margin.mean()),
    }


def _stack_ref(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """The cached reference token log-probs of a micro-batch: chosen rows then rejected rows,
    right-padded to ``width``."""
    chosen = [r[0] for r in rows]
    rejected = [r[1] for r in rows]
    out = torch.zeros(2 * len(rows), width)
    for i, values in enumerate(chosen + rejected):
        out[i, : values.numel()] = values
    return out


@torch.no_grad()
def _reference_logprobs(
    reference: Any, tokenizer: Any, pairs: list[Pair], micro: int, temperature: float
) -> list[torch.Tensor]:
    """Once, before training: each pair's reference token log-probs (chosen, rejected), with
    padding removed, so no step runs the reference again."""
    out: list[torch.Tensor] = []
    for lo in range(0, len(pairs), micro):
        part = pairs[lo : lo + micro]
        batch = pair_batch(tokenizer, part)
        with reference_mode(reference) as ref:
            logp = batch_logprobs(ref, batch, temperature, 2 * micro)
        lengths = batch.completion_mask.sum(-1)
        half = len(part)
        for i in range(half):
            chosen = logp[i, : lengths[i]]
            rejected = logp[half + i, : lengths[half + i]]
            width = max(chosen.numel(), rejected.numel())
            pad = torch.nn.functional.pad
            out.append(torch.stack([pad(chosen, (0, width - chosen.numel())), pad(rejected, (0, width - rejected.numel()))]))
    return out


# --------------------------------------------------------------------------- evaluation


def _evaluator(
    config: PreferenceConfig, tokenizer: Any, reference: Any, held: list[Pair], run_dir: Path
) -> Callable[[Any, int], dict[str, float]]:
    """Gold-reward evaluation on held-out prompts (a task, or the eval file's prompts), plus
    the preference diagnostics on held-out pairs and a sampled KL to the reference."""
    if config.data.task is None and held:
        rows = [{"prompt": p.prompt, "answer": p.chosen} for p in held]
        task = None
    else:  # a task's held-out problems, or (online, from prompts) the held-out prompt rows
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
