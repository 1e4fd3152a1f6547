"""The online RL loop (PPO, GRPO, DAPO, RLOO, ... as recipes): generate, score, transform and
filter, estimate advantages, update, log, evaluate, checkpoint.

Read ``train`` top to bottom: every algorithmic choice is a registry call on one axis
(``algorithm.advantage``, ``policy_loss``, ``kl``, ``aggregation``, ``reward_transforms``,
``batch_filter``, ``token_masks``, ``correction``). Rollout (``rollout``), reward scoring
(``score``) and the learner (``trainers/learner.py``) are separate functions over a
``RolloutBatch``, so each can later run on its own worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rewardlab.algorithms import (
    ADVANTAGES,
    BATCH_FILTERS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    REWARD_TRANSFORMS,
    TOKEN_MASKS,
)
from rewardlab.algorithms.advantages import gae_returns
from rewardlab.algorithms.controllers import (
    adaptive_entropy_coef,
    adaptive_kl_coef,
    entropy_bonus_active,
)
from rewardlab.batch import RolloutBatch, concat_batches
from rewardlab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rewardlab.config import RunConfig
from rewardlab.data.prompts import PromptSource, Row, prompt_source
from rewardlab.data.tasks import Task
from rewardlab.errors import LearnerLost, RewardlabError, StopRequested
from rewardlab.models.loading import export_model, load_policy
from rewardlab.models.logprobs import batch_logprobs_and_entropy
from rewardlab.registry import Entry
from rewardlab.rewards import (
    RewardSource,
    build_reward_sources,
    combine_rewards,
    drain_failure_counts,
    drain_source_metrics,
    reward_metrics,
    score_rows,
)
from rewardlab.rewards.pipeline import is_plain, shape_rewards
from rewardlab.rollout.engine import LocalRollout, RolloutEngine
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
from rewardlab.tracking import check_sinks, close_all, make_sinks, write_report
from rewardlab.trainers.common import (
    FINAL_MODEL,
    BadSteps,
    GracefulStop,
    StepCallback,
    check_resume_settings,
    is_due,
    log_metrics,
    make_optimizer,
    make_run_dir,
    make_scheduler,
    save_run_config,
    seed_everything,
    step_seed,
)
from rewardlab.trainers.evaluate import evaluate, write_samples
from rewardlab.trainers.learner import (
    Critic,
    critic_values,
    is_on_policy,
    make_critic,
    make_reference,
    reference_mode,
    update,
)
from rewardlab.trainers.process_rewards import (
    ProcessRewardModel,
    make_process_reward_model,
    process_token_rewards,
)

if TYPE_CHECKING:  # the agent and Ray modules load only for agent and Ray runs
    from rewardlab.agents.trainer import AgentRuntime
    from rewardlab.distributed.parallel import LearnerGroup


@dataclass
class TrainResult:
    run_dir: Path
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0  # bad dataset rows left out because data.skip_bad_rows is on
    learner_restarts: int = 0  # Ray: times the run resumed from a checkpoint after losing a learner


@dataclass
class AlgorithmState:
    """What the algorithm carries from one step to the next, saved in every checkpoint so that
    a resumed run continues exactly: where the prompt stream stands (a step that refills its
    batch takes more prompts), a stateful advantage's state (``bnpo``), and the adaptive KL
    and entropy coefficients."""

    prompt_cursor: int = 0
    advantage: dict[str, torch.Tensor] = field(default_factory=dict)
    rewards: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # transforms' state
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    entropy_on: bool = True  # an adaptive bonus applies only while entropy is below target

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_cursor": self.prompt_cursor,
            "advantage": dict(self.advantage),
            "rewards": {k: dict(v) for k, v in self.rewards.items()},
            "kl_coef": self.kl_coef,
            "entropy_coef": self.entropy_coef,
            "entropy_on": self.entropy_on,
        }

    def coefficients(self) -> dict[str, float]:
        """The KL and entropy coefficients this step's loss uses."""
        return {"kl": self.kl_coef, "entropy": self.entropy_coef if self.entropy_on else 0.0}

    @classmethod
    def start(cls, config: RunConfig) -> AlgorithmState:
        assert config.algorithm.kl is not None and config.algorithm.kl.coef is not None
        return cls(kl_coef=config.algorithm.kl.coef, entropy_coef=config.algorithm.entropy.coef)


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
    progress; the trainer itself prints nothing. On Ray, a data-parallel learner lost mid-run
    makes the run resume from its last checkpoint (at most ``ray.max_restarts`` times).
    """
    restarts = 0
    while True:
        try:
            result = _train(config, resume=resume, on_start=on_start, on_step=on_step)
            result.learner_restarts = restarts
            return result
        except LearnerLost as lost:
            restarts += 1
            if restarts > config.ray.max_restarts:
                raise RewardlabError(
                    f"{lost}; that happened {restarts} times (ray.max_restarts is {config.ray.max_restarts}); "
                    f"check the cluster, then resume with --resume {lost.run_dir}"
                ) from None
            config = config.model_copy(update={"run_dir": str(lost.run_dir)})
            resume = lost.run_dir if latest_checkpoint(lost.run_dir) is not None else None


def _train(
    config: RunConfig,
    *,
    resume: str | Path | None,
    on_start: Callable[[int, int], None] | None,
    on_step: StepCallback | None,
) -> TrainResult:
    run_dir = make_run_dir(str(resume) if resume else config.run_dir, "train", resume=resume is not None)
    if resume is not None:
        check_resumable(config, run_dir)
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed, _required_columns(config))
    sources = make_sources(config, prompts)
    agent = agent_runtime(config, policy)
    optimizer = make_optimizer(policy.parameters(), config.train.optim)
    scheduler = make_scheduler(optimizer, config.train.optim, optimizer_steps(config))
    kl = config.algorithm.kl
    assert kl is not None and kl.coef is not None
    process = config.algorithm.process_reward
    needs_reference = kl.coef > 0 or kl.target is not None or process is not None
    reference = make_reference(policy) if needs_reference else None
    critic = make_critic(policy, config) if needs_critic(config) else None
    prm = make_process_reward_model(policy, tokenizer, config)
    state = AlgorithmState.start(config)

    start = 0
    if resume is not None:
        saved = load_checkpoint(latest_checkpoint(run_dir), policy, optimizer, scheduler)
        start = saved.step
        state = restore_state(saved.extra, config, start, critic)
        if prm is not None:
            if "process_reward" not in saved.extra:
                raise RewardlabError("--resume: the checkpoint holds no process reward model")
            prm.load_state_dict(saved.extra["process_reward"])
        for source in sources:
            if source.name in saved.extra.get("reward_sources", {}):
                source.fn.load_state_dict(saved.extra["reward_sources"][source.name])
        if agent is not None:
            agent.load_state_dict(saved.extra.get("agent", {}))
    check_sinks(config.logging.sinks)
    engine = make_engine(config, policy, tokenizer, sources, prompts.task)  # syncs resumed weights
    learners = make_learners(config, engine, policy, optimizer, scheduler)
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
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
    bad_steps = BadSteps(config.train.optim.max_bad_steps)
    try:
        if start == 0:
            result.first_eval = run_eval(policy, tokenizer, prompts, sources, config, run_dir, 0, agent)
            log_metrics(sinks, 0, result.first_eval, on_step)
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(config.seed, step))
            if agent is not None:
                batch, metrics = collect_episodes(policy, tokenizer, prompts, sources, config, state, agent)
            else:
                batch, metrics = collect(policy, tokenizer, prompts, sources, config, state, step, engine)
            t1 = time.perf_counter()
            if config.engine == "ray" and config.ray.mode == "async":
                prefetch(engine, prompts, config, state, step)
            if batch.size > 0:  # a filter may leave nothing to learn from
                metrics |= prepare(policy, reference, critic, batch, config, state, prm)
                if agent is None:  # an agent batch has its per-turn advantages already
                    metrics |= estimate_advantages(batch, config, state)
                coefs = state.coefficients()
                if learners is not None:
                    metrics |= learners.update(batch, step, coefs, run_dir)
                else:
                    metrics |= update(policy, optimizer, scheduler, batch, config, step, coefs, critic)
                metrics |= bad_steps.observe(metrics.get("grad_norm", 0.0), step)
                metrics |= adapt_coefficients(state, metrics, config, batch.size)
                engine.sync(policy, step)
            metrics |= engine.metrics()
            metrics |= {"time/rollout": t1 - t0, "time/step": time.perf_counter() - t0}
            if is_due(step, config.eval.every, steps):
                t2 = time.perf_counter()
                ev = run_eval(policy, tokenizer, prompts, sources, config, run_dir, step, agent)
                metrics |= ev | {"time/eval": time.perf_counter() - t2}
                result.last_eval = ev
            log_metrics(sinks, step, metrics, on_step)
            due = is_due(step, config.checkpoint.every, steps)
            if due or stop.requested:
                extra: dict[str, Any] = {
                    "algorithm": state.to_dict(),
                    "reward_sources": reward_source_states(sources),
                }
                if critic is not None:
                    extra["critic"] = critic.state_dict()
                if prm is not None:
                    extra["process_reward"] = prm.state_dict()
                if agent is not None:
                    extra["agent"] = agent.state_dict()
                save_checkpoint(run_dir, policy, optimizer, scheduler, step, extra, config.checkpoint.keep)
            if stop.requested:
                raise StopRequested(run_dir, step)
    finally:
        stop.close()
        if learners is not None:
            learners.close()
        engine.close()
        close_all(sinks)
    if steps == 0 or start >= steps:
        result.last_eval = result.first_eval
    export_model(policy, tokenizer, run_dir / FINAL_MODEL)
    write_report(run_dir)
    return result


def restore_state(
    extra: dict[str, Any], config: RunConfig, step: int, critic: Critic | None
) -> AlgorithmState:
    """The algorithm state saved with a checkpoint. A checkpoint written before the state was
    saved resumes with the state it implies: a cursor of ``step`` full batches."""
    saved = extra.get("algorithm")
    if saved is None:
        state = AlgorithmState.start(config)
        state.prompt_cursor = step * config.train.prompts_per_step
    else:
        state = AlgorithmState(**saved)
    if critic is not None:
        if "critic" not in extra:
            raise RewardlabError(
                "--resume: the checkpoint holds no critic; resume with the run's own config"
            )
        critic.load_state_dict(extra["critic"])
    return state


# Keys a resumed run may change without changing the training trajectory: where it lives, how
# long it runs, how often it evaluates, checkpoints and logs, and how a Ray run is placed (the
# samples are seeded per prompt and the learners' sum is the one-learner update, so worker
# counts change nothing but float rounding; the engine itself and the async mode do change it).
_RESUME_MAY_CHANGE = (
    "run_dir", "eval.every", "checkpoint.", "logging.", "ray.address", "ray.num_cpus",
    "ray.rollout_workers", "ray.learners", "ray.reward_workers", "ray.cpus_per_worker",
    "ray.torch_threads", "ray.max_restarts", "ray.collective_timeout",
)


def check_resumable(config: RunConfig, run_dir: Path) -> None:
    """Refuse to resume with settings that change training (the result would not be the run
    that was interrupted); a longer ``train.steps`` is allowed, to extend a run."""
    check_resume_settings(RunConfig, config, run_dir, may_change=_RESUME_MAY_CHANGE, length_keys=("train.steps",))


def optimizer_steps(config: RunConfig) -> int:
    """Optimizer steps in the whole run (the horizon of a decaying learning rate)."""
    size = config.train.prompts_per_step * config.rollout.num_generations
    mini = min(config.train.mini_batch_size or size, size)
    return config.train.steps * config.train.ppo_epochs * -(-size // mini)


def _required_columns(config: RunConfig) -> list[str]:
    """Dataset columns the configured built-in rewards read (checked up front)."""
    needs = {"exact_match", "math_verify"}
    return sorted({r.args.get("column", "answer") for r in config.rewards if r.name in needs})


# --------------------------------------------------------------------------- stages


def needs_critic(config: RunConfig) -> bool:
    assert config.algorithm.advantage and config.algorithm.advantage.name
    return "values" in ADVANTAGES.get(config.algorithm.advantage.name).inputs


def _entries(config: RunConfig) -> list[Entry]:
    """The registry entries this run calls on the per-step axes."""
    algo = config.algorithm
    assert algo.advantage and algo.advantage.name and algo.policy_loss and algo.policy_loss.name
    found = [ADVANTAGES.get(algo.advantage.name), POLICY_LOSSES.get(algo.policy_loss.name)]
    found += [REWARD_TRANSFORMS.get(c.name) for c in algo.reward_transforms or []]
    found += [TOKEN_MASKS.get(c.name) for c in algo.token_masks or []]
    if algo.correction is not None and algo.correction.name:
        found.append(CORRECTIONS.get(algo.correction.name))
    return found


def _needs(config: RunConfig, name: str) -> bool:
    """Whether any entry of this run reads the batch field ``name``."""
    return any(name in entry.inputs for entry in _entries(config))


def needs_old_pass(config: RunConfig) -> bool:
    """Whether the sampled batch needs its own no-gradient pass for old log-probs / entropy.

    Not when only the policy loss reads them and the update is on-policy (one epoch, one
    mini-batch): there the learner's own forward is the sampling policy, and its detached
    log-probs are the old ones (TRL's shortcut with ``num_iterations=1``; it saved 16% of a
    quickstart-sized GRPO step). A run with a reference model keeps the pass for its
    ``kl/sequence`` metric; ``prepare`` adds the pass for whatever else needs it."""
    choice = config.algorithm.policy_loss
    assert choice is not None and choice.name is not None
    loss = POLICY_LOSSES.get(choice.name)
    others = [entry for entry in _entries(config) if entry is not loss]
    if "entropy" in loss.inputs or any(n in e.inputs for e in others for n in ("old_logp", "entropy")):
        return True
    if "old_logp" not in loss.inputs:
        return False
    kl = config.algorithm.kl
    with_reference = kl is not None and (bool(kl.coef) or kl.target is not None)
    if with_reference or config.algorithm.process_reward is not None:
        return True
    return not is_on_policy(config, config.train.prompts_per_step * config.rollout.num_generations)


def rollout(engine: RolloutEngine, rows: list[Row], config: RunConfig, seeds: list[int]) -> RolloutBatch:
    """``num_generations`` sampled completions per prompt from the run's rollout engine."""
    return engine.generate([row["prompt"] for row in rows], rollout_params(config), seeds, rows)


def rollout_params(config: RunConfig) -> SamplingParams:
    return SamplingParams(
        n=config.rollout.num_generations,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
        logprobs=_needs(config, "sampling_logp"),
    )


def prefetch(engine: RolloutEngine, prompts: PromptSource, config: RunConfig, state: AlgorithmState, step: int) -> None:
    """Asynchronous Ray mode: ask the rollout workers now for the batches of the next
    ``ray.max_staleness`` steps, so they generate while this step's update runs (a step that
    takes more prompts than planned, by refilling, just leaves an unused request behind)."""
    n = config.train.prompts_per_step
    for ahead in range(1, config.ray.max_staleness + 1):
        rows = prompts.rows_from(state.prompt_cursor + (ahead - 1) * n, n)
        seeds = prompt_seeds(config, step + ahead, 0, len(rows))
        engine.prefetch([row["prompt"] for row in rows], rollout_params(config), seeds, rows)


def make_engine(
    config: RunConfig, policy: Any, tokenizer: Any, sources: list[RewardSource], task: Task | None
) -> RolloutEngine:
    """The run's rollout engine: the policy itself, or Ray rollout workers (``engine: ray``),
    with reward workers for the stateless reward sources when ``ray.reward_workers`` > 0."""
    if config.engine == "ray":
        from rewardlab.distributed.rollout import RayRollout

        engine = RayRollout(config, policy, tokenizer.pad_token_id)
        engine.attach_rewards(sources, task)
        return engine
    return LocalRollout(policy, tokenizer, per_prompt_seeding(config))


def make_learners(
    config: RunConfig, engine: RolloutEngine, policy: Any, optimizer: Any, scheduler: Any
) -> LearnerGroup | None:
    """Data-parallel learner actors next to this process (``ray.learners`` > 1), else None."""
    if config.engine != "ray" or config.ray.learners == 1:
        return None
    from rewardlab.distributed.parallel import LearnerGroup
    from rewardlab.distributed.rollout import RayRollout

    assert isinstance(engine, RayRollout)
    return LearnerGroup(config, engine.ray, policy, optimizer, scheduler)


def prompt_seeds(config: RunConfig, step: int, round_: int, count: int) -> list[int]:
    """One sampling seed per prompt of a rollout round (used by per-prompt seeding)."""
    return [step_seed(config.seed, step, salt=1_000 + 100_003 * round_ + 7 * i) for i in range(count)]


def per_prompt_seeding(config: RunConfig) -> bool:
    """Whether each prompt samples with its own seed (always on Ray; see ``rollout.seeding``)."""
    return config.rollout.seeding == "per_prompt" or (config.engine == "ray" and config.rollout.seeding is None)


def score(
    batch: RolloutBatch, rows: list[Row], completions: list[str], sources: list[RewardSource], n: int
) -> dict[str, torch.Tensor]:
    """Score every completion (``batch``'s rows, decoded) with every reward source; sets
    ``batch.scores`` and ``batch.rewards`` (weighted). Scores the rollout engine already made
    (Ray reward workers) are kept; the other sources score here."""
    done = batch.scores or {}
    fresh = score_rows([s for s in sources if s.name not in done], rows, completions, n)
    scores = {s.name: done[s.name] if s.name in done else fresh[s.name] for s in sources}
    batch.scores = scores
    batch.rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    return scores


def greedy_baseline(
    policy: Any, tokenizer: Any, rows: list[Row], sources: list[RewardSource], config: RunConfig
) -> torch.Tensor:
    """The reward of each prompt's greedy completion, repeated over its group (ReMax)."""
    params = SamplingParams(n=1, max_new_tokens=config.rollout.max_new_tokens, greedy=True)
    greedy = generate(policy, tokenizer, [row["prompt"] for row in rows], params)
    score(greedy, rows, decode_completions(tokenizer, greedy), sources, 1)
    assert greedy.rewards is not None
    return greedy.rewards.repeat_interleave(config.rollout.num_generations)


def collect(
    policy: Any,
    tokenizer: Any,
    prompts: PromptSource,
    sources: list[RewardSource],
    config: RunConfig,
    state: AlgorithmState,
    step: int,
    engine: RolloutEngine | None = None,
) -> tuple[RolloutBatch, dict[str, float]]:
    """This step's scored batch: rollout, score, reward transforms and the batch filter.

    With a batch filter, rounds of ``prompts_per_step`` fresh prompts are drawn until
    ``prompts_per_step`` groups pass or ``batch_filter.max_rounds`` rounds are spent (DAPO's
    dynamic sampling); a full batch is cut to exactly ``prompts_per_step`` groups. Rollout
    metrics describe every completion generated, before filtering.
    """
    algo = config.algorithm
    chooser = algo.batch_filter
    n_prompts = config.train.prompts_per_step
    rounds = chooser.max_rounds or 1 if chooser is not None else 1
    kept: list[RolloutBatch] = []
    generated: list[RolloutBatch] = []
    raw_rewards: list[torch.Tensor] = []
    shaped_metrics: list[dict[str, float]] = []
    seen_prompts: list[str] = []
    seen_completions: list[str] = []
    groups = 0
    if engine is None:
        engine = LocalRollout(policy, tokenizer, per_prompt_seeding(config))
    drain_failure_counts(sources)  # what evaluation left in the counters is not this step's
    drain_source_metrics(sources)
    for r in range(rounds):
        rows = prompts.rows_from(state.prompt_cursor, n_prompts)
        state.prompt_cursor += n_prompts
        part = rollout(engine, rows, config, prompt_seeds(config, step, r, len(rows)))
        part.group = part.group + r * n_prompts  # distinct group ids across rounds
        completions = decode_completions(tokenizer, part)
        score(part, rows, completions, sources, config.rollout.num_generations)
        seen_prompts += [row["prompt"] for row in rows for _ in range(config.rollout.num_generations)]
        seen_completions += completions
        assert part.rewards is not None
        raw_rewards.append(part.rewards)  # the weighted sum as scored: what metrics report
        if not is_plain(sources, config.reward_combiner):
            fields = part.axis_fields() | {
                "max_len": config.rollout.max_new_tokens,
                "reference_rewards": reference_rewards(rows, config.rollout.num_generations),
            }
            seed = step_seed(config.seed, step, salt=5 + 100 * r)
            part.rewards, shaped = shape_rewards(
                part.scores, sources, config.reward_combiner, fields, state.rewards, seed
            )
            shaped_metrics.append(shaped | {"reward/shaped": float(part.rewards.mean())})
        if _needs(config, "baseline_rewards"):
            part.baseline_rewards = greedy_baseline(policy, tokenizer, rows, sources, config)
        if needs_old_pass(config):
            part.old_logp, part.entropy = batch_logprobs_and_entropy(
                policy, part, config.rollout.temperature, config.train.micro_batch_size
            )
        part.rewards = transform_rewards(part, config)
        generated.append(part)
        if chooser is None or chooser.name is None:
            kept.append(part)
            break
        fields = part.axis_fields() | {"seed": step_seed(config.seed, step, salt=3 + 100 * r)}
        keep = BATCH_FILTERS.call(chooser.name, fields, chooser.params)
        part = part.select(torch.nonzero(keep).flatten())
        kept.append(part)
        groups += int(torch.unique(part.group).numel())
        if groups >= n_prompts:
            break
    observe_generations(sources, seen_prompts, seen_completions)
    every = concat_batches(generated, tokenizer.pad_token_id)
    batch = concat_batches(kept, tokenizer.pad_token_id)
    transformed = every.rewards
    # The metrics report the rewards as scored. A copy: with one round and no filter `every`
    # is the training batch itself, whose rewards must stay transformed.
    every = replace(every, rewards=torch.cat(raw_rewards))
    metrics = rollout_metrics(every, every.scores, config) | drain_failure_counts(sources) | drain_source_metrics(sources)
    if algo.reward_transforms and transformed is not None:
        metrics["reward/transformed"] = float(transformed.mean())
    if shaped_metrics:  # per-source shaping: the mean over this step's rounds
        metrics |= {k: sum(m[k] for m in shaped_metrics) / len(shaped_metrics) for k in shaped_metrics[0]}
    if chooser is not None:
        batch = _first_groups(batch, n_prompts)
        metrics |= {
            "filter/rounds": float(len(generated)),
            "filter/kept_groups": float(torch.unique(batch.group).numel()),
            "filter/kept_rows": float(batch.size),
        }
    return batch, metrics


def agent_runtime(config: RunConfig, policy: Any) -> AgentRuntime | None:
    if config.agent is None:
        return None
    from rewardlab.agents.trainer import make_runtime

    return make_runtime(config, policy)


def make_sources(config: RunConfig, prompts: PromptSource) -> list[RewardSource]:
    """The run's reward sources; in an agent run the environment's reward (``task``) is not
    a source, and the others score whole episodes."""
    if config.agent is None:
        return build_reward_sources(config.rewards, prompts.task)
    from rewardlab.agents.trainer import extra_reward_specs

    specs = extra_reward_specs(config)
    return build_reward_sources(specs, prompts.task) if specs else []


def collect_episodes(
    policy: Any,
    tokenizer: Any,
    prompts: PromptSource,
    sources: list[RewardSource],
    config: RunConfig,
    state: AlgorithmState,
    agent: AgentRuntime,
) -> tuple[RolloutBatch, dict[str, float]]:
    """An agent step's batch: ``prompts_per_step`` rows, ``num_generations`` episodes each."""
    from rewardlab.agents.trainer import collect as collect_agent

    drain_failure_counts(sources)
    drain_source_metrics(sources)
    rows = prompts.rows_from(state.prompt_cursor, config.train.prompts_per_step)
    state.prompt_cursor += config.train.prompts_per_step
    batch, metrics = collect_agent(policy, tokenizer, rows, sources, config, agent)
    return batch, metrics | drain_failure_counts(sources) | drain_source_metrics(sources)


def observe_generations(sources: list[RewardSource], prompts: list[str], completions: list[str]) -> None:
    """Let stateful rewards (novelty bonuses) remember this step's training generations, once
    per step; evaluation only scores, so it never changes them."""
    for source in sources:
        observe = getattr(source.fn, "observe", None)
        if callable(observe):
            observe(prompts, completions)


def reward_source_states(sources: list[RewardSource]) -> dict[str, Any]:
    """The state of every reward source that has one (a novelty bonus's history)."""
    return {s.name: s.fn.state_dict() for s in sources if callable(getattr(s.fn, "state_dict", None))}


def reference_rewards(rows: list[Row], n: int) -> torch.Tensor | None:
    """A dataset's ``reference_reward`` column (a number, or a list of numbers, per prompt),
    repeated over each prompt's completions: the references of ``log_sigmoid`` / ``par``."""
    if not rows or "reference_reward" not in rows[0]:
        return None
    try:
        values = torch.tensor([row["reference_reward"] for row in rows], dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise RewardlabError(
            "the dataset's reference_reward column must hold a number (or a list of the same "
            f"length) in every row: {e}"
        ) from None
    return values.repeat_interleave(n, dim=0)


def _first_groups(batch: RolloutBatch, n: int) -> RolloutBatch:
    """The rows of the first ``n`` groups (in batch order)."""
    ids = torch.unique_consecutive(batch.group)[:n]
    return batch.select(torch.nonzero(torch.isin(batch.group, ids)).flatten())


def transform_rewards(batch: RolloutBatch, config: RunConfig) -> torch.Tensor:
    """The configured reward transforms, in order (overlong penalty, unlikeliness, ...)."""
    assert batch.rewards is not None
    rewards = batch.rewards
    for choice in config.algorithm.reward_transforms or []:
        fields = batch.axis_fields() | {"rewards": rewards, "max_len": config.rollout.max_new_tokens}
        rewards = REWARD_TRANSFORMS.call(choice.name, fields, choice.params)
    return rewards


def prepare(
    policy: Any,
    reference: Any | None,
    critic: Critic | None,
    batch: RolloutBatch,
    config: RunConfig,
    state: AlgorithmState,
    prm: ProcessRewardModel | None = None,
) -> dict[str, float]:
    """The no-gradient passes before the update: old log-probs (when the update is off-policy
    or a stage reads them), reference log-probs, critic values, the KL penalty in the reward,
    the per-token rewards (plus the process reward, whose PRM takes its online step here),
    token masks and the mismatch-correction weights."""
    algo = config.algorithm
    assert algo.kl is not None and algo.kl.name is not None
    temperature, micro = config.rollout.temperature, config.train.micro_batch_size
    metrics: dict[str, float] = {}
    kl_in_reward = algo.kl.placement == "reward" and reference is not None
    need_old = (
        not is_on_policy(config, batch.size)
        or kl_in_reward
        or algo.kl.target is not None
        or algo.correction is not None
    )
    if batch.old_logp is None and need_old:
        batch.old_logp, batch.entropy = batch_logprobs_and_entropy(policy, batch, temperature, micro)
    # The tokens the policy produced: all completion tokens, or an agent's own turns.
    own = batch.loss_mask if batch.loss_mask is not None else batch.completion_mask
    mask = own.float()
    kl_tokens = None
    if reference is not None:
        with reference_mode(reference) as ref:
            batch.ref_logp, _ = batch_logprobs_and_entropy(ref, batch, temperature, micro)
        if batch.old_logp is not None:
            kl_fields = {"logp": batch.old_logp, "ref_logp": batch.ref_logp}
            kl_tokens = KL_ESTIMATORS.call(algo.kl.name, kl_fields, {}) * mask
            metrics["kl/sequence"] = float(kl_tokens.sum(-1).mean())
    if kl_in_reward and kl_tokens is not None and not _needs(config, "token_rewards"):
        assert batch.rewards is not None
        batch.rewards = batch.rewards - state.kl_coef * kl_tokens.sum(-1)
    if _needs(config, "token_rewards"):
        batch.token_rewards = outcome_token_rewards(batch)
        if kl_in_reward and kl_tokens is not None:
            batch.token_rewards = batch.token_rewards - state.kl_coef * kl_tokens
        if prm is not None:
            assert reference is not None
            dense, found = process_token_rewards(prm, reference, batch, config)
            batch.token_rewards = batch.token_rewards + dense
            metrics |= found
    if critic is not None:
        batch.values = critic_values(critic, batch, micro) * mask
    if algo.token_masks:
        loss_mask = own
        for choice in algo.token_masks:
            chosen = TOKEN_MASKS.call(choice.name, batch.axis_fields(), choice.params)
            loss_mask = loss_mask * chosen.to(loss_mask.dtype)
        batch.loss_mask = loss_mask
        metrics["token_mask/kept"] = float(loss_mask.sum() / own.sum().clamp(min=1))
    if algo.correction is not None and algo.correction.name is not None:
        weights, found = CORRECTIONS.call(algo.correction.name, batch.axis_fields(), algo.correction.params)
        batch.is_weights = weights.detach()
        if "masked" in found:  # rejected tokens leave the loss and its normalizer (as verl)
            base = batch.loss_mask if batch.loss_mask is not None else batch.completion_mask
            batch.loss_mask = base * (1 - found["masked"]).to(base.dtype)
        real = mask.sum().clamp(min=1)
        metrics |= {f"correction/{k}": float((v * mask).sum() / real) for k, v in found.items()}
    return metrics


def outcome_token_rewards(batch: RolloutBatch) -> torch.Tensor:
    """[B, T] per-token rewards: each completion's reward on its last real token, 0 elsewhere
    (PPO for RLHF: the reward model scores the whole completion at its end)."""
    assert batch.rewards is not None
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    last = (batch.completion_mask.sum(-1) - 1).clamp(min=0)
    out[torch.arange(batch.size), last] = batch.rewards.float()
    return out * batch.completion_mask


def estimate_advantages(
    batch: RolloutBatch, config: RunConfig, state: AlgorithmState
) -> dict[str, float]:
    """Sets ``batch.advantages`` (and, with a critic, its targets ``batch.returns``); a stateful
    estimator's new state goes into ``state``. Returns the state's scalars as metrics."""
    choice = config.algorithm.advantage
    assert choice is not None and choice.name is not None
    entry = ADVANTAGES.get(choice.name)
    fields = batch.axis_fields()
    if "state" in entry.inputs:
        fields["state"] = state.advantage
        batch.advantages, state.advantage = ADVANTAGES.call(choice.name, fields, choice.params)
    else:
        batch.advantages = ADVANTAGES.call(choice.name, fields, choice.params)
    if batch.values is not None:
        assert batch.token_rewards is not None
        settings = {**entry.params, **choice.params}
        batch.returns = gae_returns(
            batch.token_rewards,
            batch.values,
            batch.completion_mask,
            gamma=settings["gamma"],
            lam=settings["lam"],
        )
    return {f"advantage/{k}": float(v) for k, v in state.advantage.items() if v.numel() == 1}


def adapt_coefficients(
    state: AlgorithmState, metrics: dict[str, float], config: RunConfig, batch_size: int
) -> dict[str, float]:
    """Move the adaptive KL and entropy coefficients after a step (the next step uses them);
    returns the coefficients this step used. The KL horizon counts samples, as in TRL / verl
    (each step advances the controller by the batch's number of completions)."""
    algo = config.algorithm
    assert algo.kl is not None
    out: dict[str, float] = {}
    if algo.kl.target is not None:
        out["kl/coef"] = state.kl_coef
        if "kl/sequence" in metrics:
            state.kl_coef = adaptive_kl_coef(
                state.kl_coef,
                metrics["kl/sequence"],
                target=algo.kl.target,
                horizon=algo.kl.horizon or 10000,
                n_steps=batch_size,
            )
    if algo.entropy.target is not None:
        out["entropy/coef"] = state.coefficients()["entropy"]
        state.entropy_on = entropy_bonus_active(metrics["entropy"], algo.entropy.target)
        state.entropy_coef = adaptive_entropy_coef(
            state.entropy_coef,
            metrics["entropy"],
            target=algo.entropy.target,
            delta=algo.entropy.delta,
            max_coef=algo.entropy.max_coef,
        )
    return out


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
    agent: AgentRuntime | None = None,
) -> dict[str, float]:
    """Held-out metrics at ``step``; with a ``run_dir``, sample completions are saved too."""
    seed = step_seed(config.seed, step, salt=2)
    if agent is not None:
        from rewardlab.agents.trainer import evaluate_agent

        return evaluate_agent(policy, tokenizer, prompts.heldout_rows, config, agent, seed, run_dir, step)
    result = evaluate(
        policy,
        tokenizer,
        prompts.heldout_rows,
        sources,
        config.eval,
        config.rollout.max_new_tokens,
        seed=seed,
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
    sources = make_sources(config, prompts)
    return run_eval(policy, tokenizer, prompts, sources, config, None, 0, agent_runtime(config, policy))
