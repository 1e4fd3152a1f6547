"""Online DPO: pairs sampled from the current policy and labelled by a reward source.

"Direct Language Model Alignment from Online AI Feedback" (Guo et al., arXiv 2402.04792):
each step samples several completions per fresh prompt from the policy being trained, a
labeller (here any reward source of the config: a rule, a verifier, a reward model) scores
them, and the best and the worst of each prompt become a preference pair for any loss of
``PREFERENCE_LOSSES``. Prompts whose completions all score the same give no pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from rewardlab.config import PreferenceConfig
from rewardlab.data.preferences import Pair, heldout_pairs
from rewardlab.data.prompts import Row, prompt_source
from rewardlab.models.loading import export_model, load_policy
from rewardlab.rewards import (
    build_reward_sources,
    combine_rewards,
    drain_failure_counts,
    score_rows,
)
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
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
    step_seed,
)
from rewardlab.trainers.learner import make_reference
from rewardlab.trainers.preference import (
    PreferenceResult,
    _evaluator,
    _reference_logprobs,
    preference_step,
)


def best_worst_pairs(rows: list[Row], completions: list[str], rewards: torch.Tensor, n: int) -> list[Pair]:
    """For each prompt (``n`` consecutive completions), its highest- and lowest-scored
    completions as (chosen, rejected); ties go to the earlier completion, and a prompt whose
    completions all score the same gives no pair."""
    pairs = []
    grouped = rewards.view(-1, n)
    for i, row in enumerate(rows):
        scores = grouped[i]
        if scores.max() == scores.min():
            continue
        best, worst = int(scores.argmax()), int(scores.argmin())
        pairs.append(Pair(row["prompt"], completions[i * n + best], completions[i * n + worst]))
    return pairs


def train_online_preference(
    config: PreferenceConfig,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> PreferenceResult:
    """Online DPO (or any preference loss) as ``config.preference.online`` says."""
    online = config.preference.online
    assert online is not None
    run_dir = make_run_dir(config.run_dir, "preference")
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed)
    sources = build_reward_sources(config.rewards, prompts.task)
    held = heldout_pairs(config.data, tokenizer, config.seed) if config.data.task else []
    reference = make_reference(policy)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    scheduler = make_scheduler(optimizer, config.train.optim, online.steps)
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    evaluator = _evaluator(config, tokenizer, reference, held, run_dir)
    sinks = make_sinks(config.logging.sinks, run_dir, config.model_dump(mode="json"))
    result = PreferenceResult(run_dir)
    if on_start:
        on_start(0, online.steps)
    try:
        result.first_eval = evaluator(policy, 0)
        log_metrics(sinks, 0, result.first_eval, None)
        started = time.perf_counter()
        for step in range(1, online.steps + 1):
            torch.manual_seed(step_seed(config.seed, step))
            metrics = online_step(policy, reference, tokenizer, prompts, sources, config, step)
            if "loss" in metrics:
                metrics |= {
                    "grad_norm": clip_and_step(policy, optimizer, scheduler, config.train.optim.max_grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                }
            if config.eval.every and step % config.eval.every == 0:
                metrics |= evaluator(policy, step)
            log_metrics(sinks, step, metrics, on_step)
            result.steps = step
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.last_eval = evaluator(policy, result.steps)
        log_metrics(sinks, result.steps, result.last_eval, None)
    finally:
        close_all(sinks)
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def online_step(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Any,
    sources: Any,
    config: PreferenceConfig,
    step: int,
) -> dict[str, float]:
    """Sample, label, pair and accumulate the gradient of one step (the caller steps)."""
    online = config.preference.online
    assert online is not None
    n = online.num_generations
    rows = prompts.rows_from((step - 1) * online.prompts_per_step, online.prompts_per_step)
    params = SamplingParams(
        n=n, temperature=online.temperature, top_p=config.rollout.top_p, max_new_tokens=config.rollout.max_new_tokens
    )
    batch = generate(policy, tokenizer, [row["prompt"] for row in rows], params)
    completions = decode_completions(tokenizer, batch)
    drain_failure_counts(sources)
    scores = score_rows(sources, rows, completions, n)
    rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    pairs = best_worst_pairs(rows, completions, rewards, n)
    metrics = {"reward": float(rewards.mean()), "pairs": float(len(pairs))} | drain_failure_counts(sources)
    if not pairs:
        return metrics
    ref = _reference_logprobs(reference, tokenizer, pairs, config.train.micro_batch_size, config.rollout.temperature)
    policy.train()
    return metrics | preference_step(policy, tokenizer, pairs, ref, list(range(len(pairs))), config)
