"""The online RL loop (GRPO, Dr. GRPO, RLOO, ... as recipes): generate, score, estimate
advantages, update, log, evaluate, checkpoint.

Read ``train`` top to bottom: every algorithmic choice is a registry call on one axis
(``algorithm.advantage``, ``policy_loss``, ``kl``, ``aggregation``). Rollout (``rollout``),
reward scoring (``score``) and the learner (``update``) are separate functions over a
``RolloutBatch``, so each can later run on its own worker.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rewardlab.batch import RolloutBatch
from rewardlab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rewardlab.config import RunConfig, load_config
from rewardlab.data.prompts import PromptSource, Row, prompt_source
from rewardlab.errors import RewardlabError
from rewardlab.models.loading import export_model, is_lora, load_policy
from rewardlab.models.logprobs import (
    batch_logprobs,
    forward_completion_logits,
    token_entropy,
    token_logprobs,
)
from rewardlab.rewards import (
    RewardSource,
    build_reward_sources,
    combine_rewards,
    drain_failure_counts,
    reward_metrics,
    score_rows,
)
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
from rewardlab.tracking import check_sinks, close_all, make_sinks, write_report
from rewardlab.trainers.common import (
    CONFIG_FILE,
    FINAL_MODEL,
    StepCallback,
    clip_and_step,
    log_metrics,
    make_optimizer,
    make_run_dir,
    make_scheduler,
    save_run_config,
    seed_everything,
    step_seed,
)
from rewardlab.trainers.evaluate import evaluate, write_samples


@dataclass
class TrainResult:
    run_dir: Path
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0  # bad dataset rows left out because data.skip_bad_rows is on


# --------------------------------------------------------------------------- the loop


def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Run (or resume) online RL as ``config`` says; returns the run folder and eval metrics.

    ``on_start(first_step, total_steps)`` and ``on_step(step, metrics)`` let a caller show
    progress; the trainer itself prints nothing.
    """
    run_dir = make_run_dir(str(resume) if resume else config.run_dir, "train", resume=resume is not None)
    if resume is not None:
        check_resumable(config, run_dir)
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed, _required_columns(config))
    sources = build_reward_sources(config.rewards, prompts.task)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    scheduler = make_scheduler(optimizer, config.train.optim, optimizer_steps(config))
    reference = make_reference(policy) if config.algorithm.kl.coef > 0 else None

    start = 0
    if resume is not None:
        start = load_checkpoint(latest_checkpoint(run_dir), policy, optimizer, scheduler).step
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)  # on resume too: it may run longer than first planned
    sinks = make_sinks(
        config.logging.sinks,
        run_dir,
        config.model_dump(mode="json"),
        resume_from_step=start if resume is not None else None,
    )
    result = TrainResult(run_dir, skipped_rows=prompts.skipped)
    steps = config.train.steps
    if on_start:
        on_start(start, steps)
    try:
        if start == 0:
            result.first_eval = run_eval(policy, tokenizer, prompts, sources, config, run_dir, 0)
            log_metrics(sinks, 0, result.first_eval, on_step)
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(config.seed, step))
            rows = prompts.train_rows(step - 1, config.train.prompts_per_step)
            batch = rollout(policy, tokenizer, rows, config)
            t1 = time.perf_counter()
            drain_failure_counts(sources)  # what evaluation left in the counters is not this step's
            scores = score(batch, rows, tokenizer, sources, config.rollout.num_generations)
            batch.advantages = estimate_advantages(batch, config)
            metrics = update(policy, reference, optimizer, scheduler, batch, config, step)
            metrics |= rollout_metrics(batch, scores, config) | drain_failure_counts(sources)
            metrics |= {"time/rollout": t1 - t0, "time/step": time.perf_counter() - t0}
            if _due(step, config.eval.every, steps):
                t2 = time.perf_counter()
                ev = run_eval(policy, tokenizer, prompts, sources, config, run_dir, step)
                metrics |= ev | {"time/eval": time.perf_counter() - t2}
                result.last_eval = ev
            log_metrics(sinks, step, metrics, on_step)
            if _due(step, config.checkpoint.every, steps):
                save_checkpoint(
                    run_dir, policy, optimizer, scheduler, step, {}, config.checkpoint.keep
                )
    finally:
        close_all(sinks)
    if steps == 0 or start >= steps:
        result.last_eval = result.first_eval
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


# Keys a resumed run may change without changing the training trajectory: where it lives, how
# long it runs, and how often it evaluates, checkpoints and logs.
_RESUME_MAY_CHANGE = ("run_dir", "train.steps", "eval.every", "checkpoint.", "logging.")


def check_resumable(config: RunConfig, run_dir: Path) -> None:
    """Refuse to resume with settings that change training (the result would not be the run
    that was interrupted); a longer ``train.steps`` is allowed, to extend a run."""
    saved = _flatten(load_config(RunConfig, run_dir / CONFIG_FILE).model_dump(mode="json"))
    given = _flatten(config.model_dump(mode="json"))
    changed = sorted(
        k for k in saved.keys() | given.keys()
        if saved.get(k) != given.get(k) and not k.startswith(_RESUME_MAY_CHANGE)
    )
    decaying = saved.get("train.optim.schedule") != "constant"
    if decaying and saved.get("train.steps") != given.get("train.steps"):
        changed.append("train.steps")  # a decaying learning rate depends on the run's length
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {given.get(k)!r})" for k in changed[:4])
        raise RewardlabError(
            f"--resume {run_dir}: the config differs from the run's own {CONFIG_FILE} in {shown}; "
            "resume with the run's own settings (no CONFIG argument and no --set of these keys; "
            "train.steps with a constant learning rate, eval.every, checkpoint.* and logging.* "
            "may change)"
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): tree}


def optimizer_steps(config: RunConfig) -> int:
    """Optimizer steps in the whole run (the horizon of a decaying learning rate)."""
    size = config.train.prompts_per_step * config.rollout.num_generations
    mini = min(config.train.mini_batch_size or size, size)
    return config.train.steps * config.train.ppo_epochs * -(-size // mini)


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _required_columns(config: RunConfig) -> list[str]:
    """Dataset columns the configured built-in rewards read (checked up front)."""
    needs = {"exact_match", "math_verify"}
    return sorted({r.args.get("column", "answer") for r in config.rewards if r.name in needs})


# --------------------------------------------------------------------------- stages


def rollout(policy: Any, tokenizer: Any, rows: list[Row], config: RunConfig) -> RolloutBatch:
    """``num_generations`` sampled completions per prompt (HF generate with KV cache)."""
    params = SamplingParams(
        n=config.rollout.num_generations,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )
    return generate(policy, tokenizer, [row["prompt"] for row in rows], params)


def score(
    batch: RolloutBatch, rows: list[Row], tokenizer: Any, sources: list[RewardSource], n: int
) -> dict[str, torch.Tensor]:
    """Score every completion with every reward source; sets ``batch.rewards`` (weighted)."""
    scores = score_rows(sources, rows, decode_completions(tokenizer, batch), n)
    batch.scores = scores
    batch.rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    return scores


def estimate_advantages(batch: RolloutBatch, config: RunConfig) -> torch.Tensor:
    choice = config.algorithm.advantage
    assert choice is not None  # filled from the recipe by the config
    return ADVANTAGES.call(choice.name, batch.axis_fields(), choice.params)


def make_reference(policy: Any) -> Any:
    """The frozen reference policy: with LoRA, the policy itself with its adapter disabled
    (no second copy of the weights); otherwise a frozen copy taken before training."""
    if is_lora(policy):
        return policy
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextmanager
def _reference_mode(reference: Any) -> Iterator[Any]:
    with reference.disable_adapter() if is_lora(reference) else nullcontext():
        yield reference


# --------------------------------------------------------------------------- learner


def update(
    policy: Any,
    reference: Any | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: RolloutBatch,
    config: RunConfig,
    step: int,
) -> dict[str, float]:
    """Several epochs of clipped policy-gradient steps over mini-batches of ``batch``.

    Each mini-batch is one optimizer step, accumulated over micro-batches; the aggregation
    divides by the mini-batch's totals so accumulation does not change the gradient.
    """
    train = config.train
    temperature = config.rollout.temperature
    size = batch.size
    mini = min(train.mini_batch_size or size, size)
    on_policy = train.ppo_epochs == 1 and mini == size
    if not on_policy:  # ratios are taken against the policy that sampled
        batch.old_logp = batch_logprobs(policy, batch, temperature, train.micro_batch_size)
    if reference is not None:
        with _reference_mode(reference) as ref:
            batch.ref_logp = batch_logprobs(ref, batch, temperature, train.micro_batch_size)

    order_rng = torch.Generator().manual_seed(step_seed(config.seed, step, salt=1))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    policy.train()
    for _ in range(train.ppo_epochs):
        order = torch.randperm(size, generator=order_rng) if not on_policy else torch.arange(size)
        for start in range(0, size, mini):
            mini_batch = batch.select(order[start : start + mini])
            totals = {
                "total_tokens": float(mini_batch.completion_mask.sum().clamp(min=1)),
                "total_seqs": float(mini_batch.size),
                "max_len": config.rollout.max_new_tokens,
            }
            for lo in range(0, mini_batch.size, train.micro_batch_size):
                part = mini_batch.select(torch.arange(lo, min(lo + train.micro_batch_size, mini_batch.size)))
                loss, token_stats = micro_batch_loss(policy, part, totals, config, temperature)
                loss.backward()
                sums["loss"] += float(loss.detach())
                for name, (total, count) in token_stats.items():
                    sums[name] += total
                    counts[name] += count
            sums["grad_norm"] += clip_and_step(policy, optimizer, scheduler, train.optim.max_grad_norm)
            counts["grad_norm"] += 1
    num_steps = train.ppo_epochs * -(-size // mini)
    out = {"loss": sums.pop("loss") / num_steps, "lr": scheduler.get_last_lr()[0]}
    out |= {name: sums[name] / max(counts[name], 1.0) for name in sums}
    return out


def micro_batch_loss(
    policy: Any,
    part: RolloutBatch,
    totals: dict[str, float],
    config: RunConfig,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
    """The aggregated loss of one micro-batch and per-token statistics (sum, count)."""
    algo = config.algorithm
    assert algo.policy_loss and algo.aggregation and algo.kl
    logits = forward_completion_logits(policy, part, temperature)
    logp = token_logprobs(logits, part.completion_ids)
    fields = part.axis_fields() | {"logp": logp}
    fields.setdefault("old_logp", logp.detach())
    per_token, loss_metrics = POLICY_LOSSES.call(algo.policy_loss.name, fields, algo.policy_loss.params)
    mask = part.completion_mask.to(per_token.dtype)
    stats = {"entropy": token_entropy(logits)} | loss_metrics
    if algo.kl.coef > 0 and part.ref_logp is not None:
        kl = KL_ESTIMATORS.call(algo.kl.name, fields, {})
        per_token = per_token + algo.kl.coef * kl
        stats["kl"] = kl.detach()
    agg_fields = {"loss": per_token, "mask": mask, **totals}
    loss = AGGREGATIONS.call(algo.aggregation.name, agg_fields, algo.aggregation.params)
    count = float(mask.sum())
    return loss, {name: (float((v * mask).sum()), count) for name, v in stats.items()}


# --------------------------------------------------------------------------- metrics & eval


def rollout_metrics(
    batch: RolloutBatch, scores: dict[str, torch.Tensor], config: RunConfig
) -> dict[str, float]:
    assert batch.rewards is not None
    lengths = batch.completion_mask.sum(-1).float()
    n = config.rollout.num_generations
    grouped = batch.rewards.view(-1, n)
    return {
        "reward": float(batch.rewards.mean()),
        "reward/std": float(batch.rewards.std()) if batch.size > 1 else 0.0,
        "reward/zero_std_groups": float((grouped.std(-1) == 0).float().mean()) if n > 1 else 1.0,
        **reward_metrics(scores),
        "completion_length": float(lengths.mean()),
        "completion_length/truncated": float(batch.truncated.float().mean()),
    }


def run_eval(
    policy: Any,
    tokenizer: Any,
    prompts: PromptSource,
    sources: list[RewardSource],
    config: RunConfig,
    run_dir: Path | None,
    step: int,
) -> dict[str, float]:
    """Held-out metrics at ``step``; with a ``run_dir``, sample completions are saved too."""
    result = evaluate(
        policy,
        tokenizer,
        prompts.heldout_rows,
        sources,
        config.eval,
        config.rollout.max_new_tokens,
        seed=step_seed(config.seed, step, salt=2),
        num_samples_saved=config.logging.samples,
    )
    if run_dir is not None and config.logging.samples:
        write_samples(run_dir, step, result.samples)
    return result.metrics


def evaluate_config(config: RunConfig) -> dict[str, float]:
    """Evaluate ``config.model`` on the config's held-out prompts (``rewardlab eval``)."""
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed, _required_columns(config))
    sources = build_reward_sources(config.rewards, prompts.task)
    return run_eval(policy, tokenizer, prompts, sources, config, None, 0)
