"""Online and iterative preference optimization: samples from the current policy, labelled by
a judge, trained with any loss of ``PREFERENCE_LOSSES``.

Every iteration t samples ``num_generations`` completions per fresh prompt from the current
policy pi_t, asks the judge (``preference.online.judge``: the run's rewards compared, or a
pairwise preference function that may be intransitive) for the win-rate of every completion
against the prompt's other samples, builds the method's examples, and trains ``epochs`` passes
over them. The methods differ in what they build:

- ``online_dpo`` — "Direct Language Model Alignment from Online AI Feedback" (arXiv
  2402.04792): each prompt's highest- versus lowest-win-rate completion;
- ``selm`` — "Self-Exploring Language Models" (arXiv 2405.19332): the same pairs, the
  optimistic ``selm`` loss, with pi_t as the reference (as in DNO): the loss estimates its
  optimism term E_{y ~ pi_ref}[log pi(y)] on the pair, which holds when the pair was sampled
  from the reference, i.e. from pi_t;
- ``xpo`` — "Exploratory Preference Optimization" (arXiv 2405.21046): one reference-policy
  sample joins each prompt's candidates; the ``xpo`` loss pushes down the policy's
  log-probability of the reference's samples (exploration);
- ``dno`` — "Direct Nash Optimization" (arXiv 2404.03715), its practical form: pairs whose
  win-rate gap exceeds ``min_margin``, trained with a DPO-family loss whose reference is pi_t
  (its log-probs taken before training on the iteration's samples);
- ``inpo`` — "Iterative Nash Policy Optimization" (arXiv 2407.00617): best-versus-worst pairs,
  pi_t's log-probs as the loss's anchor besides pi_ref;
- ``sppo`` — "Self-Play Preference Optimization" (arXiv 2405.00675): every completion with its
  win rate against the prompt's other samples (an estimate of P(y beats pi_t)), pi_t as anchor;
- ``nash_md`` — "Nash Learning from Human Feedback" (arXiv 2312.00886): every completion
  against one sample of the geometric mixture of pi_t and pi_ref.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardlab.config import PER_COMPLETION_METHODS, PreferenceConfig
from rewardlab.data.preferences import Pair, Unpaired, heldout_examples
from rewardlab.data.prompts import Row, prompt_source
from rewardlab.models.loading import export_model, load_policy
from rewardlab.rewards import (
    build_reward_sources,
    combine_rewards,
    drain_failure_counts,
    drain_source_metrics,
    score_rows,
)
from rewardlab.rewards.preference_fn import (
    PreferenceFn,
    build_preference_fn,
    group_win_matrix,
    win_rates,
)
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
from rewardlab.rollout.mixture import generate_mixture
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
    step_seed,
)
from rewardlab.trainers.learner import make_reference, reference_mode
from rewardlab.trainers.preference import (
    PreferenceResult,
    _evaluator,
    preference_step,
)
from rewardlab.trainers.preference_views import (
    Cache,
    Example,
    View,
    cached_logprobs,
    check_losses_fit,
    comparison_pairs,
    sequence_sums,
)

# The per-example fields each method adds to its view's.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "xpo": ("chosen_from_reference", "rejected_from_reference"),
    "inpo": ("anchor_chosen_logp", "anchor_rejected_logp"),
    "sppo": ("win_rate",),
    "nash_md": ("preference",),
}


@dataclass
class Iteration:
    """What one iteration trains on."""

    view: View
    examples: list[Example] = field(default_factory=list)
    ref_cache: Cache = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Context:
    """The run's fixed parts, passed to every iteration."""

    policy: Any
    reference: Any
    tokenizer: Any
    prompts: Any
    sources: list[Any]
    judge: PreferenceFn
    config: PreferenceConfig


def method_view(method: str) -> View:
    return "unpaired" if method in PER_COMPLETION_METHODS else "pairwise"


def train_online_preference(
    config: PreferenceConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> PreferenceResult:
    """The online method of ``config.preference.online`` (or the run in ``resume``, continued
    from its newest checkpoint: an iteration's prompts and random seeds depend on its number
    only, so nothing else needs saving); the model is saved in ``final/``."""
    online = config.preference.online
    assert online is not None
    check_losses_fit(
        config.preference.losses, method_view(online.method), METHOD_FIELDS.get(online.method, ()), offline=False
    )
    run_dir = start_run_dir(config, resume, "preference", "preference.online.steps")
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed)
    sources = build_reward_sources(config.rewards, prompts.task)
    judge = build_preference_fn(online.judge, sources, "preference.online.judge")
    held = comparison_pairs(heldout_examples(config.data, tokenizer, config.seed)) if config.data.task else []
    reference = make_reference(policy)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    scheduler = make_scheduler(optimizer, config.train.optim, online.steps * _steps_per_iteration(config))
    start = resume_step(run_dir, resume, policy, optimizer, scheduler)
    check_sinks(config.logging.sinks)
    save_run_config(config, run_dir)
    evaluator = _evaluator(config, tokenizer, reference, held, run_dir)
    sinks = make_sinks(
        config.logging.sinks, run_dir, config.model_dump(mode="json"),
        resume_from_step=start if resume is not None else None,
    )
    ctx = Context(policy, reference, tokenizer, prompts, sources, judge, config)
    result = PreferenceResult(run_dir, steps=start)
    if on_start:
        on_start(start, online.steps)
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the iteration, checkpoint, stop
    checkpoints = Checkpoints(run_dir, config.checkpoint.every, config.checkpoint.keep, stop)
    bad_steps = BadSteps(config.train.optim.max_bad_steps)
    try:
        if start == 0:
            result.first_eval = evaluator(policy, 0)
            log_metrics(sinks, 0, result.first_eval, None)
        started = time.perf_counter()
        for step in range(start + 1, online.steps + 1):
            torch.manual_seed(step_seed(config.seed, step))
            built = collect(ctx, step)
            metrics = built.metrics
            if built.examples:
                metrics |= train_iteration(ctx, built, optimizer, scheduler, random.Random(step_seed(config.seed, step)))
                metrics |= bad_steps.observe(metrics["grad_norm"], step)
            if config.eval.every and step % config.eval.every == 0:
                metrics |= evaluator(policy, step)
            log_metrics(sinks, step, metrics, on_step)
            result.steps = step
            save_if_due(checkpoints, policy, optimizer, scheduler, step, online.steps)
            if out_of_time(started, config.train.max_seconds):
                break
        result.seconds = time.perf_counter() - started
        result.last_eval = evaluator(policy, result.steps)
        log_metrics(sinks, result.steps, result.last_eval, None)
    finally:
        stop.close()
        close_all(sinks)
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def _steps_per_iteration(config: PreferenceConfig) -> int:
    """Optimizer steps of a full iteration (every prompt giving its examples)."""
    online = config.preference.online
    assert online is not None
    per_prompt = online.num_generations if online.method in PER_COMPLETION_METHODS else 1
    return online.epochs * math.ceil(online.prompts_per_step * per_prompt / config.train.batch_size)


def train_iteration(
    ctx: Context, built: Iteration, optimizer: Any, scheduler: Any, rng: random.Random
) -> dict[str, float]:
    """``epochs`` shuffled passes over the iteration's examples in mini-batches of
    ``train.batch_size``; returns the mean of each step's metrics."""
    config = ctx.config
    online = config.preference.online
    assert online is not None
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    ctx.policy.train()
    for _ in range(online.epochs):
        order = list(range(len(built.examples)))
        rng.shuffle(order)
        for lo in range(0, len(order), config.train.batch_size):
            index = order[lo : lo + config.train.batch_size]
            metrics = preference_step(
                ctx.policy, ctx.tokenizer, built.examples, built.ref_cache, index, config, built.view, built.extras
            )
            metrics["grad_norm"] = clip_and_step(ctx.policy, optimizer, scheduler, config.train.optim.max_grad_norm)
            for name, value in metrics.items():
                sums[name] += value
            steps += 1
    return {name: value / steps for name, value in sums.items()} | {
        "lr": scheduler.get_last_lr()[0],
        "optimizer_steps": float(steps),
    }


# --------------------------------------------------------------------------- collecting


def collect(ctx: Context, step: int) -> Iteration:
    """Sample iteration ``step``'s prompts, label the samples and build the method's examples."""
    online = ctx.config.preference.online
    assert online is not None
    rows = ctx.prompts.rows_from((step - 1) * online.prompts_per_step, online.prompts_per_step)
    n = online.num_generations
    completions = _sample(ctx, ctx.policy, rows, n)
    drain_failure_counts(ctx.sources)  # what evaluation and the judge left is not this step's
    drain_source_metrics(ctx.sources)
    scores = score_rows(ctx.sources, rows, completions, n)
    rewards = combine_rewards(scores, {s.name: s.weight for s in ctx.sources})
    metrics = {"reward": float(rewards.mean())} | drain_failure_counts(ctx.sources) | drain_source_metrics(ctx.sources)
    if online.method == "nash_md":
        built = _nash_md(ctx, rows, completions)
    elif online.method == "sppo":
        built = _sppo(ctx, rows, completions)
    else:
        built = _pairs(ctx, rows, completions)
    built.metrics = metrics | built.metrics
    return built


def sampling_params(config: PreferenceConfig, n: int) -> SamplingParams:
    """``n`` samples per prompt at the online temperature (the policy's and the mixture's)."""
    online = config.preference.online
    assert online is not None
    return SamplingParams(
        n=n, temperature=online.temperature, top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )


def _sample(ctx: Context, model: Any, rows: Sequence[Row], n: int, *, as_reference: bool = False) -> list[str]:
    """``n`` completions per row from ``model`` (as the reference: adapter off with LoRA)."""
    params = sampling_params(ctx.config, n)
    prompts = [row["prompt"] for row in rows]
    if as_reference:
        with reference_mode(model) as frozen:
            batch = generate(frozen, ctx.tokenizer, prompts, params)
    else:
        batch = generate(model, ctx.tokenizer, prompts, params)
    return decode_completions(ctx.tokenizer, batch)


def _win_rates(ctx: Context, rows: Sequence[Row], completions: list[str], k: int) -> torch.Tensor:
    """[G, k] win rate of each of a prompt's ``k`` adjacent completions against the others."""
    prompts = [row["prompt"] for row in rows for _ in range(k)]
    matrix = group_win_matrix(ctx.judge, prompts, completions, k, _columns(rows, k))
    return win_rates(matrix).view(len(rows), k)


def _columns(rows: Sequence[Row], repeat: int) -> dict[str, list[Any]]:
    """The rows' extra columns, each value repeated for the row's completions."""
    names = sorted({key for row in rows for key in row if key != "prompt"})
    return {key: [row.get(key) for row in rows for _ in range(repeat)] for key in names}


def best_worst(win: torch.Tensor, min_margin: float) -> list[tuple[int, int, int]]:
    """(prompt, best, worst) for every prompt whose best and worst win rates differ by more
    than ``min_margin``; ties go to the earlier completion."""
    picked = []
    for g, rates in enumerate(win):
        best, worst = int(rates.argmax()), int(rates.argmin())
        if float(rates[best] - rates[worst]) > min_margin:
            picked.append((g, best, worst))
    return picked


def _pairs(ctx: Context, rows: Sequence[Row], completions: list[str]) -> Iteration:
    """online_dpo, selm, xpo, dno, inpo: one best-versus-worst pair per prompt."""
    config = ctx.config
    online = config.preference.online
    assert online is not None
    n = online.num_generations
    k = n
    from_reference = torch.zeros(len(rows), n, dtype=torch.bool)
    if online.method == "xpo":
        # The reference's sample joins each prompt's candidates, after the policy's n.
        extra = _sample(ctx, ctx.reference, rows, 1, as_reference=True)
        completions = [c for g in range(len(rows)) for c in completions[g * n : (g + 1) * n] + [extra[g]]]
        k = n + 1
        from_reference = torch.cat([from_reference, torch.ones(len(rows), 1, dtype=torch.bool)], dim=1)
    win = _win_rates(ctx, rows, completions, k)
    picked = best_worst(win, online.min_margin)
    pairs: list[Example] = [
        Pair(rows[g]["prompt"], completions[g * k + b], completions[g * k + w]) for g, b, w in picked
    ]
    built = Iteration("pairwise", pairs, metrics=_pair_metrics(win, picked))
    if not pairs:
        return built
    micro, temperature = config.train.micro_batch_size, config.rollout.temperature
    anchor_needed = online.method in ("dno", "selm", "inpo")
    anchor = (
        cached_logprobs(ctx.policy, ctx.tokenizer, pairs, micro, temperature, as_reference=False)
        if anchor_needed
        else []
    )
    # DNO's and SELM's reference is the iterate pi_t itself; the other methods keep pi_ref.
    built.ref_cache = (
        anchor
        if online.method in ("dno", "selm")
        else cached_logprobs(ctx.reference, ctx.tokenizer, pairs, micro, temperature, as_reference=True)
    )
    if online.method == "xpo":
        built.extras = {
            "chosen_from_reference": torch.tensor([bool(from_reference[g, b]) for g, b, _ in picked]),
            "rejected_from_reference": torch.tensor([bool(from_reference[g, w]) for g, _, w in picked]),
        }
        built.metrics["xpo/reference_chosen"] = float(built.extras["chosen_from_reference"].float().mean())
    if online.method == "inpo":
        sums = torch.stack([sequence_sums(anchor, i) for i in range(len(pairs))])
        built.extras = {"anchor_chosen_logp": sums[:, 0], "anchor_rejected_logp": sums[:, 1]}
    return built


def _pair_metrics(win: torch.Tensor, picked: list[tuple[int, int, int]]) -> dict[str, float]:
    gaps = [float(win[g, b] - win[g, w]) for g, b, w in picked]
    return {"pairs": float(len(picked)), "win_rate/gap": sum(gaps) / len(gaps) if gaps else 0.0}


def _sppo(ctx: Context, rows: Sequence[Row], completions: list[str]) -> Iteration:
    """Every completion with its win rate against its prompt's other samples, anchored at pi_t."""
    config = ctx.config
    online = config.preference.online
    assert online is not None
    n = online.num_generations
    win = _win_rates(ctx, rows, completions, n).reshape(-1)
    examples: list[Example] = [
        Unpaired(rows[i // n]["prompt"], c, bool(win[i] > 0.5)) for i, c in enumerate(completions)
    ]
    anchor = cached_logprobs(
        ctx.policy, ctx.tokenizer, examples, config.train.micro_batch_size, config.rollout.temperature,
        as_reference=False,
    )
    return Iteration(
        "unpaired", examples, anchor, {"win_rate": win},
        metrics={"win_rate/std": float(win.view(len(rows), n).std(dim=1).mean())},
    )


def _nash_md(ctx: Context, rows: Sequence[Row], completions: list[str]) -> Iteration:
    """Every policy sample y against one sample y' of the geometric mixture of pi_t and
    pi_ref (the same prompt, drawn independently): P(y beats y') from the judge."""
    config = ctx.config
    online = config.preference.online
    assert online is not None
    n = online.num_generations
    prompts = [row["prompt"] for row in rows]
    params = sampling_params(config, n)
    mixed = decode_completions(
        ctx.tokenizer, generate_mixture(ctx.policy, ctx.reference, ctx.tokenizer, prompts, params, online.mixture)
    )
    repeated = [p for p in prompts for _ in range(n)]
    preference = ctx.judge.probs(repeated, completions, mixed, _columns(rows, n))
    examples: list[Example] = [
        Unpaired(repeated[i], c, bool(preference[i] > 0.5)) for i, c in enumerate(completions)
    ]
    ref_cache = cached_logprobs(
        ctx.reference, ctx.tokenizer, examples, config.train.micro_batch_size, config.rollout.temperature,
        as_reference=True,
    )
    return Iteration(
        "unpaired", examples, ref_cache, {"preference": preference.float()},
        metrics={"nash_md/preference": float(preference.float().mean())},
    )
