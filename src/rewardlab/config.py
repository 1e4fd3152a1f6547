"""The run schema: one pydantic model per section, YAML files plus `--set a.b=c` overrides.

Every mistake is reported as one line that names the key (``train.lr``), what is wrong, and
the closest valid key when the key is unknown.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rewardlab.errors import ConfigError, RegistryError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LoraConfig(Section):
    r: int = Field(8, gt=0)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(Section):
    """``name``: ``builtin:tiny``, ``smollm2-135m``, a local HF folder, or a hub id."""

    name: str = "builtin:tiny"
    dtype: Literal["float32", "bfloat16"] = "float32"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each layer's activations in the backward pass instead of keeping them: "
        "less memory for a second forward's time (the same gradients)",
    )


class DataConfig(Section):
    """Either a built-in ``task`` or a dataset ``path`` (JSONL, JSON, Parquet, HF folder)."""

    task: str | None = "arithmetic"
    task_args: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    eval_path: str | None = None
    split: str = Field("train", description="split of a saved DatasetDict folder")
    eval_split: str | None = Field(None, description="split of eval_path; default: split")
    skip_bad_rows: bool = False
    heldout_size: int = Field(200, gt=0)
    num_examples: int | None = Field(
        256, gt=0, description="SFT on a task: how many demonstrations to draw (a fixed set)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is not None:
            self.task = None
        if self.task is None and self.path is None:
            raise ValueError("set either data.task (a built-in task) or data.path (a dataset file)")
        return self


class NamedChoice(Section):
    """One entry of a list axis: a reward source's ``transforms``, the algorithm's
    ``reward_transforms`` and ``token_masks``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


def _check_named(registry: Any, items: list[Any], where: str) -> None:
    """Check each item's name and params against ``registry``; a mistake names
    ``<where>.<i>.params``. Raised as ValueError, which pydantic reports with the key path."""
    try:
        for i, item in enumerate(items):
            registry.check_params(item.name, item.params, f"{where}.{i}.params")
    except RegistryError as e:
        raise ValueError(str(e)) from None


class RewardSpec(Section):
    """A reward source: a built-in name, ``task`` (the task's verifier), or ``module:function``;
    its ``transforms`` apply to its scores in order, before the sources are combined."""

    name: str
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict)
    transforms: list[NamedChoice] = Field(default_factory=list)
    on_error: Literal["raise", "fallback"] = Field(
        "raise",
        description="a completion whose scoring raises or gives NaN/inf: stop with an error "
        "naming it, or score it `fallback` and count it (failures/<name>/raised|not_finite)",
    )
    fallback: float = 0.0
    timeout: float | None = Field(
        None,
        gt=0,
        description="seconds one call of the reward (a batch) may take; a call still running "
        "then is abandoned and follows on_error (counted as failures/<name>/timeout)",
    )

    @model_validator(mode="after")
    def _check_transforms(self) -> RewardSpec:
        from rewardlab.algorithms import REWARD_TRANSFORMS

        _check_named(REWARD_TRANSFORMS, self.transforms, "transforms")
        return self


class CombinerChoice(Section):
    """How the sources' (transformed) scores become one reward: a ``reward_combiner`` entry."""

    name: str = "weighted_sum"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> CombinerChoice:
        from rewardlab.rewards.combiners import REWARD_COMBINERS

        try:
            REWARD_COMBINERS.check_params(self.name, self.params, "reward_combiner.params")
        except RegistryError as e:
            raise ValueError(str(e)) from None  # pydantic reports ValueErrors with the key path
        return self


class RolloutConfig(Section):
    num_generations: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(8, ge=1)
    seeding: Literal["batch", "per_prompt"] | None = Field(
        None,
        description="batch: one random stream for the whole batch (HF generate); per_prompt: "
        "each completion its own stream, so samples do not depend on how the batch is split "
        "(what engine: ray does; default: batch locally, per_prompt on ray)",
    )


class AxisChoice(Section):
    """One axis of a recipe. Unset ``name`` keeps the recipe's entry; ``params`` given for the
    recipe's own entry are merged into the recipe's (so one parameter can be changed alone)."""

    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class FilterChoice(AxisChoice):
    """A batch filter; ``max_rounds`` bounds how many rollout rounds a step may take to refill
    the batch with groups that pass (1 = no refill)."""

    max_rounds: int | None = Field(None, ge=1)


class KLChoice(Section):
    """KL to the reference policy; unset fields keep the recipe's.

    ``placement: loss`` adds coef * KL per token to the loss (GRPO); ``placement: reward``
    subtracts it from the reward before the advantage (PPO-RLHF, REINFORCE++). A ``target``
    makes the coefficient adaptive (Ziegler et al., arXiv 1909.08593); ``coef`` is its start.
    """

    name: str | None = None
    coef: float | None = Field(None, ge=0.0)
    placement: Literal["loss", "reward"] | None = None
    target: float | None = Field(None, gt=0.0, description="adaptive: target KL per sequence")
    horizon: int | None = Field(
        None, ge=1, description="adaptive: completions over which the gap closes (as TRL/verl)"
    )


class EntropyConfig(Section):
    """Entropy bonus ``-coef * H_t`` per token; with a ``target`` the coefficient adapts
    (Skywork-OR1, arXiv 2505.22312): +delta while entropy is below target, -delta above."""

    coef: float = Field(0.0, ge=0.0)
    target: float | None = Field(None, gt=0.0)
    delta: float = Field(0.005, gt=0.0)
    max_coef: float | None = Field(None, gt=0.0)


class CriticOptimConfig(Section):
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.99)


class CriticConfig(Section):
    """The value model, used when the advantage estimator reads ``values`` (``gae``): a copy
    of the policy's network with a scalar head, trained alongside it with its own optimizer."""

    optim: CriticOptimConfig = Field(default_factory=CriticOptimConfig)
    value_clip: float | None = Field(0.2, gt=0.0, description="PPO value clipping; null = off")


class ProcessRewardConfig(Section):
    """Dense process rewards added to the per-token rewards (``token_rewards``) that the
    advantage estimator reads (``gae``, ``prime``).

    ``implicit_prm`` (arXiv 2412.01981): token rewards beta * log(pi_prm / pi_ref), where
    pi_ref is the run's reference policy and pi_prm starts from ``model`` (a folder or name
    with the policy's tokenizer; null = a copy of the initial policy, whose rewards start at
    0). The completion is cut into steps at ``separator``; each step's summed reward goes
    through the ``credit`` transforms in order (``min_form``, ``clip``, ``delta``, ``gated``;
    none = plain sum), is placed on the step's last token and scaled by ``coef``. With
    ``update`` the PRM is trained online on each step's rollouts, one optimizer step of the
    cross-entropy between sigmoid(beta * log-ratio) and the outcome reward clipped to [0, 1]
    (PRIME, arXiv 2502.01456).
    """

    source: Literal["implicit_prm"] = "implicit_prm"
    model: str | None = None
    beta: float = Field(0.05, gt=0.0)
    separator: str = "\n"
    credit: list[NamedChoice] = Field(default_factory=list)
    coef: float = 1.0
    update: bool = True
    lr: float = Field(1e-6, gt=0.0, description="the PRM's learning rate (online update)")
    max_grad_norm: float | None = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> ProcessRewardConfig:
        from rewardlab.algorithms import CREDIT_TRANSFORMS

        _check_named(CREDIT_TRANSFORMS, self.credit, "credit")
        if self.model is None and not self.update:
            raise ValueError(
                "process_reward: with model null the PRM starts as the reference policy, so "
                "its rewards stay 0 without update: true; give a trained PRM's model or update"
            )
        return self


# config key -> registry axis, for the axes that are lists or may be absent
_LIST_AXES = {"reward_transforms": "reward_transform", "token_masks": "token_mask"}
_OPTIONAL_AXES = {"batch_filter": "batch_filter", "correction": "correction"}


class AlgorithmConfig(Section):
    """A recipe name plus optional per-axis overrides; unset axes come from the recipe.

    A list axis given in the config replaces the recipe's list; ``batch_filter: null`` or
    ``correction: null`` switches off the recipe's.
    """

    recipe: str = "grpo"
    advantage: AxisChoice | None = None
    policy_loss: AxisChoice | None = None
    kl: KLChoice | None = None
    aggregation: AxisChoice | None = None
    reward_transforms: list[NamedChoice] | None = None
    batch_filter: FilterChoice | None = None
    token_masks: list[NamedChoice] | None = None
    correction: AxisChoice | None = None
    entropy: EntropyConfig = Field(default_factory=EntropyConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    process_reward: ProcessRewardConfig | None = None

    @model_validator(mode="after")
    def _resolve(self) -> AlgorithmConfig:
        from rewardlab.algorithms import RECIPES
        from rewardlab.errors import did_you_mean

        if self.recipe not in RECIPES:
            raise ValueError(
                f"unknown recipe '{self.recipe}'{did_you_mean(self.recipe, RECIPES)}; "
                f"choose one of: {', '.join(sorted(RECIPES))}"
            )
        preset = RECIPES[self.recipe]
        for axis in ("advantage", "policy_loss", "aggregation"):
            setattr(self, axis, _merge_axis(getattr(self, axis), preset[axis]))
        self.kl = _merge_kl(self.kl, preset["kl"])
        for key in _LIST_AXES:
            if getattr(self, key) is None:
                setattr(self, key, [NamedChoice(**c) for c in preset.get(key, [])])
        switched_off = {k for k in _OPTIONAL_AXES if k in self.model_fields_set and getattr(self, k) is None}
        if "correction" not in switched_off and preset.get("correction"):
            self.correction = _merge_axis(self.correction, preset["correction"])
        if "batch_filter" not in switched_off and preset.get("batch_filter"):
            merged = _merge_axis(self.batch_filter, preset["batch_filter"])
            rounds = self.batch_filter.max_rounds if self.batch_filter else None
            self.batch_filter = FilterChoice(
                name=merged.name,
                params=merged.params,
                max_rounds=rounds or preset["batch_filter"].get("max_rounds"),
            )
        if self.batch_filter is not None and self.batch_filter.max_rounds is None:
            self.batch_filter.max_rounds = 1
        try:
            self._check_params()
        except RegistryError as e:
            # pydantic only wraps ValueError; re-raise so the message carries the key path.
            raise ValueError(str(e)) from None
        return self

    def _check_params(self) -> None:
        from rewardlab.algorithms import AXES

        for axis in ("advantage", "policy_loss", "aggregation"):
            choice: AxisChoice = getattr(self, axis)
            AXES[axis].check_params(choice.name, choice.params, f"algorithm.{axis}.params")
        assert self.policy_loss is not None
        for key in ("clip_low", "clip_high"):
            value = self.policy_loss.params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
                raise RegistryError(
                    f"algorithm.policy_loss.params.{key}: must be a number >= 0 (the ratio is kept "
                    f"within [1 - clip_low, 1 + clip_high]), got {value!r}"
                )
        assert self.kl is not None and self.kl.name is not None
        AXES["kl"].get(self.kl.name)
        for key, axis in _LIST_AXES.items():
            _check_named(AXES[axis], getattr(self, key), f"algorithm.{key}")
        for key, axis in _OPTIONAL_AXES.items():
            opt: AxisChoice | None = getattr(self, key)
            if opt is not None:
                if opt.name is None:
                    raise RegistryError(f"algorithm.{key}: give a name ({', '.join(AXES[axis].names())})")
                AXES[axis].check_params(opt.name, opt.params, f"algorithm.{key}.params")
        advantage = self.advantage
        assert advantage is not None and advantage.name is not None
        reads_tokens = "token_rewards" in AXES["advantage"].get(advantage.name).inputs
        if self.process_reward is not None and not reads_tokens:
            readers = [e.name for e in AXES["advantage"] if "token_rewards" in e.inputs]
            raise RegistryError(
                f"algorithm.process_reward: advantage '{advantage.name}' does not read "
                f"per-token rewards; use one that does ({', '.join(readers)})"
            )


def _merge_axis(given: AxisChoice | None, recipe: dict[str, Any]) -> AxisChoice:
    given = given or AxisChoice()
    if given.name is None or given.name == recipe["name"]:
        return AxisChoice(name=recipe["name"], params={**recipe.get("params", {}), **given.params})
    return AxisChoice(name=given.name, params=given.params)


_KL_DEFAULTS: dict[str, Any] = {"placement": "loss", "target": None, "horizon": 10000}


def _merge_kl(given: KLChoice | None, recipe: dict[str, Any]) -> KLChoice:
    """Recipe values under the fields the config sets (an unset field keeps the recipe's)."""
    set_here = given.model_dump(include=given.model_fields_set) if given else {}
    return KLChoice(**{**_KL_DEFAULTS, **recipe, **{k: v for k, v in set_here.items() if v is not None}})


class OptimConfig(Section):
    lr: float = Field(5e-4, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: keep lr, or decay it to 0 by the last step"
    )
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.99)
    max_bad_steps: int = Field(
        5, ge=1, description="stop after this many optimizer steps in a row with a NaN/inf loss or gradient (each is skipped)"
    )


class TrainConfig(Section):
    steps: int = Field(100, ge=0)
    prompts_per_step: int = Field(32, ge=1)
    ppo_epochs: int = Field(1, ge=1)
    mini_batch_size: int | None = Field(None, ge=1, description="sequences per optimizer step")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward")
    optim: OptimConfig = Field(default_factory=OptimConfig)


class EvalConfig(Section):
    every: int = Field(20, ge=0, description="0 = only before and after training")
    pass_k: int = Field(4, ge=1)
    num_samples: int | None = Field(None, ge=1, description="samples per prompt; default pass_k")
    temperature: float = Field(1.0, gt=0.0)
    batch_size: int = Field(256, ge=1)
    correct_threshold: float = 1.0


class CheckpointConfig(Section):
    every: int = Field(50, ge=0, description="0 = only at the end")
    keep: int = Field(2, ge=1)


class LoggingConfig(Section):
    sinks: list[str] = Field(default_factory=lambda: ["jsonl"])
    samples: int = Field(8, ge=0, description="completions saved at each evaluation")
    project: str = Field("rewardlab", description="wandb project")
    experiment: str = Field("rewardlab", description="MLflow experiment")


class ProgressConfig(Section):
    """SPA-RL's progress estimator (``agent.credit.name: spa``): an MLP over each turn's
    mean-pooled policy hidden states, fitted so a turn's contributions sum to the outcome."""

    hidden: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    fit_steps: int = Field(20, ge=1, description="estimator updates per training step")


class AgentConfig(Section):
    """A multi-turn agent run: episodes in an environment instead of single completions.

    ``rollout.max_new_tokens`` bounds each turn; ``rollout.num_generations`` episodes per row
    form a group; the rewards named in ``rewards`` are added at the episode's end, where
    ``task`` stands for the environment's own (per-turn) rewards.
    """

    env: str = Field(description="a built-in environment (rewardlab list) or module:factory")
    env_args: dict[str, Any] = Field(default_factory=dict)
    max_turns: int = Field(4, ge=1)
    max_episode_tokens: int = Field(
        512, ge=8, description="prompt plus every turn; an episode that would pass it ends, truncated"
    )
    step_timeout: float | None = Field(
        10.0, gt=0.0, description="seconds an environment's reset or step may take before its episode ends with an error"
    )
    max_workers: int = Field(8, ge=1, description="environment steps run at once")
    error_reward: float = Field(0.0, description="reward of the turn whose environment raised or timed out")
    chat_template: bool = Field(True, description="render the conversation with the tokenizer's chat template (if it has one)")
    demo_noise: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="SFT warm start: the share of demonstration turns where the expert acts at random "
        "(the environment's random_action) instead: an imperfect demonstrator leaves RL something to improve",
    )
    credit: NamedChoice = Field(
        default_factory=lambda: NamedChoice(name="trajectory"),
        description="turn-level credit assignment: a turn_credit entry",
    )
    progress: ProgressConfig = Field(default_factory=ProgressConfig)

    @model_validator(mode="after")
    def _check_credit(self) -> AgentConfig:
        from rewardlab.algorithms.turn_credit import TURN_CREDIT

        try:
            TURN_CREDIT.check_params(self.credit.name, self.credit.params, "agent.credit.params")
        except RegistryError as e:
            raise ValueError(str(e)) from None
        return self


# Advantage estimators whose baseline is the other completions of the same prompt: with one
# completion per prompt every advantage is 0.
GROUP_BASELINES = ("bnpo", "bnpo_decomposed", "dr_grpo", "grpo", "lite_ppo", "opo", "passk", "prime", "rloo")


class RayConfig(Section):
    """How an ``engine: ray`` run places its work (see docs/ray.md)."""

    address: str | None = Field(
        None, description="join this cluster ('auto' or host:port); unset starts a local one"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster (default: all)")
    rollout_workers: int = Field(2, ge=1)
    learners: int = Field(1, ge=1, description="data-parallel learners; rank 0 is the driver")
    reward_workers: int = Field(0, ge=0, description="actors scoring the stateless rewards")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per actor")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor")
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = Field(
        1, ge=1, description="async: samples at most this many policy updates old are trained on"
    )
    max_restarts: int = Field(3, ge=0, description="restarts of a lost worker before the run fails")
    collective_timeout: float = Field(300.0, gt=0.0, description="seconds a learner waits for its peers")


class RunConfig(Section):
    """An online RL run (``rewardlab train``)."""

    @model_validator(mode="after")
    def _check_batch(self) -> RunConfig:
        advantage = self.algorithm.advantage
        assert advantage is not None and advantage.name is not None
        n = self.rollout.num_generations
        if n < 2 and advantage.name in GROUP_BASELINES:
            raise ValueError(
                f"rollout.num_generations: advantage '{advantage.name}' compares each completion with "
                f"the other completions of its prompt, so it needs at least 2 per prompt (got {n}; every "
                "advantage would be 0 and nothing would be learned); set rollout.num_generations to 2 or "
                "more, or use an advantage without a group baseline (reinforce, reinforce_pp, remax, gae)"
            )
        size = self.train.prompts_per_step * n
        mini = self.train.mini_batch_size
        if mini is not None and mini < size and size % mini:
            divisors = [d for d in range(1, size) if size % d == 0][-3:]
            raise ValueError(
                f"train.mini_batch_size: {mini} does not divide the {size} completions of a step "
                f"(train.prompts_per_step {self.train.prompts_per_step} x rollout.num_generations {n}), so "
                f"the last mini-batch would hold only {size % mini} and still take a full optimizer step; "
                f"choose a divisor of {size}, such as {', '.join(map(str, divisors))}"
            )
        return self

    seed: int = 0
    run_dir: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="task")])
    reward_combiner: CombinerChoice = Field(default_factory=CombinerChoice)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    agent: AgentConfig | None = None
    engine: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check_engine(self) -> RunConfig:
        if self.engine != "ray":
            return self
        if self.rollout.seeding == "batch":
            raise ValueError(
                "rollout.seeding: 'batch' cannot be split over Ray rollout workers; remove the key "
                "(a Ray run seeds each prompt's completions) or run with engine: local"
            )
        if self.agent is not None:
            raise ValueError("engine: agent runs do not run on Ray yet; use engine: local")
        correction = self.algorithm.correction
        if self.ray.mode == "async" and (correction is None or correction.name is None):
            # Stale samples come from an older policy: their importance weights are not optional.
            self.algorithm.correction = AxisChoice(name="tis")
        if self.ray.learners > 1 and self.algorithm.process_reward is not None:
            raise ValueError("ray.learners: a process reward model trains on one learner only; set ray.learners: 1")
        from rewardlab.algorithms import ADVANTAGES

        advantage = self.algorithm.advantage
        assert advantage is not None and advantage.name is not None
        if self.ray.learners > 1 and "values" in ADVANTAGES.get(advantage.name).inputs:
            raise ValueError(
                f"ray.learners: advantage '{advantage.name}' trains a critic, which runs on one learner "
                "only for now; set ray.learners: 1"
            )
        return self

    @model_validator(mode="after")
    def _check_agent(self) -> RunConfig:
        if self.agent is None:
            return self
        from rewardlab.algorithms import ADVANTAGES

        algo = self.algorithm
        assert algo.advantage is not None and algo.advantage.name is not None
        if {"values", "token_rewards"} & set(ADVANTAGES.get(algo.advantage.name).inputs):
            raise ValueError(
                f"algorithm.advantage: '{algo.advantage.name}' needs a critic or per-token rewards; "
                "agent runs assign credit per turn with agent.credit instead (e.g. gigpo)"
            )
        if algo.batch_filter is not None and algo.batch_filter.name is not None:
            raise ValueError("algorithm.batch_filter: not supported in agent runs; set it to null")
        if algo.reward_transforms:
            raise ValueError("algorithm.reward_transforms: not supported in agent runs; set it to []")
        if algo.process_reward is not None:
            raise ValueError("algorithm.process_reward: not supported in agent runs; remove it")
        return self


class SFTOptimConfig(OptimConfig):
    """SFT's optimizer: the same keys, a higher default learning rate."""

    lr: float = Field(1e-3, gt=0.0)


class SFTTrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    max_seconds: float | None = Field(None, gt=0, description="stop early after this long")
    optim: SFTOptimConfig = Field(default_factory=SFTOptimConfig)


class SFTConfig(Section):
    """A supervised fine-tuning run (``rewardlab sft``)."""

    seed: int = 0
    run_dir: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="task")],
        description="used only to evaluate on held-out prompts",
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    agent: AgentConfig | None = Field(
        None, description="SFT on an environment's expert episodes (loss on the expert's turns only)"
    )


class PreferenceLossChoice(Section):
    """One preference loss (``dpo``, ``ipo``, ``simpo``, ``kto``, ...) and its weight; several
    may be combined."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


class JudgeConfig(Section):
    """The preference function P(a beats b | prompt) that labels sampled completions (online
    preference methods) or pays a win-rate reward (``spo``).

    With no ``function``, it compares the run's combined rewards: ``temperature`` 0 gives hard
    labels (1 if a scores higher, 0 if lower, 0.5 on a tie), a positive temperature the
    Bradley-Terry probability ``sigmoid((r_a - r_b) / temperature)``. A ``function``
    (``module:function``) is called as ``fn(prompts, completions_a, completions_b, **args,
    **columns)`` and returns one probability in [0, 1] per row; it may be intransitive.
    """

    function: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    temperature: float = Field(0.0, ge=0.0)


# Online methods whose samples feed one specific loss: the loss they are named after.
METHOD_LOSS: dict[str, str] = {"xpo": "xpo", "selm": "selm", "inpo": "inpo", "sppo": "sppo", "nash_md": "nash_md"}
# Methods that train on single completions (with a win rate or preference), not on pairs.
PER_COMPLETION_METHODS = ("sppo", "nash_md")

OnlineMethod = Literal["online_dpo", "xpo", "selm", "dno", "inpo", "sppo", "nash_md"]


class OnlinePreferenceConfig(Section):
    """Online and iterative preference optimization. Each of ``steps`` iterations samples
    ``num_generations`` completions for ``prompts_per_step`` fresh prompts from the current
    policy pi_t, labels them with ``judge``, and trains ``epochs`` passes over what it built
    (mini-batches of ``train.batch_size``):

    - ``online_dpo``: each prompt's highest- versus lowest-win-rate pair;
    - ``selm``: the same pairs, with pi_t as the reference;
    - ``xpo``: the same over the policy's samples plus one reference-policy sample per prompt;
    - ``dno``: pairs whose win-rate gap exceeds ``min_margin``, with pi_t as the reference;
    - ``inpo``: best-versus-worst pairs, with pi_t's log-probs as the loss's anchor;
    - ``sppo``: every completion with its win rate against the prompt's other samples;
    - ``nash_md``: every completion against one sample of the geometric mixture of pi_t and
      the reference (coefficient ``mixture``).
    """

    method: OnlineMethod = "online_dpo"
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    num_generations: int = Field(4, ge=2)
    temperature: float = Field(1.0, gt=0.0)
    epochs: int = Field(1, ge=1, description="passes over each iteration's samples")
    min_margin: float = Field(
        0.0, ge=0.0, lt=1.0, description="a pair needs a win-rate gap above this (0: skip ties only)"
    )
    mixture: float = Field(0.5, ge=0.0, le=1.0, description="nash_md: the reference's share of the mixture")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


class TokenRewardsConfig(Section):
    """Per-token rewards for the token-level losses (``tgdpo``, ``treg``), computed once
    before training:

    - ``guide``: ``beta * log(pi_guide / pi_ref)`` per token, the implicit reward of a model
      already trained with DPO on the same kind of data (``model``: its folder or name) — the
      guidance TGDPO uses;
    - ``contrastive``: T-REG's self-generated rewards, ``sigmoid(log pi_ref(y_t | better) -
      log pi_ref(y_t | worse)) - 1/2``, where ``better`` / ``worse`` are prompt templates
      (``{prompt}`` is replaced by the example's prompt) asking for a better or a worse answer.
    """

    source: Literal["guide", "contrastive"]
    model: str | None = None
    beta: float = Field(0.1, gt=0.0)
    better: str = "Write a correct, helpful and concise answer.\n{prompt}"
    worse: str = "Write a wrong, unhelpful and careless answer.\n{prompt}"

    @model_validator(mode="after")
    def _check(self) -> TokenRewardsConfig:
        if self.source == "guide" and not self.model:
            raise ValueError("token_rewards.model: source 'guide' needs the guide model's folder or name")
        for key in ("better", "worse"):
            if "{prompt}" not in getattr(self, key):
                raise ValueError(f"token_rewards.{key}: the template must contain {{prompt}}")
        return self


class PreferenceSection(Section):
    """What a preference run optimizes (its presence marks a config as a preference run)."""

    losses: list[PreferenceLossChoice] = Field(
        default_factory=lambda: [PreferenceLossChoice(name="dpo")], min_length=1
    )
    online: OnlinePreferenceConfig | None = Field(
        None, description="sample and label pairs from the current policy instead of a dataset"
    )
    token_rewards: TokenRewardsConfig | None = Field(
        None, description="per-token rewards for tgdpo / treg"
    )

    @model_validator(mode="after")
    def _check(self) -> PreferenceSection:
        from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES

        _check_named(PREFERENCE_LOSSES, self.losses, "preference.losses")
        if self.online is not None:
            self._check_method_loss(self.online.method)
        return self

    def _check_method_loss(self, method: str) -> None:
        """A method named after its loss trains with that loss: it is the default, and a loss
        list that leaves it out (or, for per-completion methods, adds pairwise ones) is an error."""
        wanted = METHOD_LOSS.get(method)
        if wanted is None:
            return
        if "losses" not in self.model_fields_set:
            self.losses = [PreferenceLossChoice(name=wanted)]
            return
        names = [c.name for c in self.losses]
        if wanted not in names:
            raise ValueError(
                f"preference.losses: method '{method}' trains with the '{wanted}' loss; add "
                f"{{name: {wanted}}} to the list (or leave `losses` out to get it by default)"
            )
        if method in PER_COMPLETION_METHODS and names != [wanted]:
            raise ValueError(
                f"preference.losses: method '{method}' trains on single completions, so its only "
                f"loss is '{wanted}'; remove {[n for n in names if n != wanted]}"
            )


class PreferenceTrainConfig(Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="pairs per forward/backward")
    max_seconds: float | None = Field(None, gt=0, description="stop early after this long")
    optim: SFTOptimConfig = Field(default_factory=SFTOptimConfig)


class PreferenceConfig(Section):
    """An offline preference-optimization run (``rewardlab train`` on a config with a
    ``preference:`` section): pairs ``prompt`` / ``chosen`` / ``rejected`` from a dataset, or
    built from a task (chosen = the right answer, rejected = a wrong one)."""

    seed: int = 0
    run_dir: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="task")],
        description="the gold reward of evaluation (greedy and sampled completions)",
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    train: PreferenceTrainConfig = Field(default_factory=PreferenceTrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_online(self) -> PreferenceConfig:
        online = self.preference.online
        if online is not None and online.method == "nash_md" and self.rollout.top_p != 1.0:
            raise ValueError(
                "rollout.top_p: nash_md samples its opponent from the exact geometric mixture of "
                "the policy and the reference, which top-p would truncate; set rollout.top_p: 1.0"
            )
        if online is not None and self.preference.token_rewards is not None:
            raise ValueError(
                "preference.token_rewards: token rewards (tgdpo, treg) are computed for offline "
                "runs only; remove preference.online or preference.token_rewards"
            )
        return self


# --- loading ---------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 needs a dot: ``1.0e-4``).

    Without this, ``lr: 1e-4`` only works because pydantic coerces the string, and a value in a
    free-form mapping (``algorithm.*.params``, ``task_args``, reward ``args``) stays a string.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError:
        raise
    except Exception as e:  # noqa: BLE001
        # PyYAML's constructors raise bare ValueError / KeyError / AttributeError for scalars
        # that match a resolver or carry a tag but cannot be built (`2001-13-01`, `0x_`,
        # `!!bool x`, `!!timestamp x`), and its composer recurses once per nesting level.
        what = "it does not fit its type"
        if isinstance(e, RecursionError):
            what = "it is nested too deeply"
        elif isinstance(e, ValueError) and str(e).strip():
            what = str(e).strip().split("\n")[0]
        raise yaml.YAMLError(f"a value cannot be read ({what})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear message for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = _parse_yaml(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections (model:, data:, ...)")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(
            f"--set '{assignment}': expected KEY=VALUE, for example train.optim.lr=1e-4"
        )
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = _parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).strip().split("\n")[0]
        raise ConfigError(f"--set {key}: the value {raw!r} is not valid YAML ({problem})") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            continue
        if not isinstance(node.get(part, {}), (dict, list)):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        if parts[i + 1].isdigit() and part not in node:
            # Defaults are not in `data`: indexing a list the file does not set would create
            # {'0': ...} here and fail later with a bare "Input should be a valid list".
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"--set {key}: '{where}' is not set in the config file, so it has no item "
                f"{parts[i + 1]} to change; set the whole list instead (for example "
                f"--set '{where}=[...]') or write it in the YAML file"
            )
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, path: list[str]) -> int:
    # isascii: str.isdigit() also accepts digits int() rejects ('²'); the length bound keeps
    # int() under Python's digit limit (an index that long is past the end of any list anyway).
    if not (part.isascii() and part.isdigit()) or len(part) > 18 or int(part) >= len(node):
        raise ConfigError(f"--set: '{'.'.join(path)}' needs a list index below {len(node)}")
    return int(part)


def parse_config(
    schema: type[Section], data: dict[str, Any], source: str = "config"
) -> Any:
    """Validate ``data`` against ``schema``; the first problem becomes one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(schema, e, source)) from None


def load_config(
    schema: type[Section], path: str | Path | None, overrides: list[str] | None = None
) -> Any:
    """Load ``path`` (or defaults when None), apply ``--set`` overrides, and validate."""
    data = load_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return parse_config(schema, data, str(path) if path is not None else "config")


def dump_config(config: Section, path: Path) -> None:
    """Write the fully resolved config as YAML."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _describe(schema: type[BaseModel], error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        key = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            valid = _valid_keys(schema, item["loc"][:-1])
            close = _closest_key(loc[-1], valid, _nested_keys(schema, item["loc"][:-1], valid))
            hint = f" (did you mean '{'.'.join([*loc[:-1], close])}'?)" if close else ""
            problems.append(f"unknown key '{key}'{hint}; valid keys here: {', '.join(valid)}")
        elif item["type"] == "missing":
            problems.append(f"'{key}' is required")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"'{key}': {msg}{shown}" if loc else f"{msg}{shown}")
    return f"{source}: " + "; ".join(problems[:3])


def _closest_key(key: str, here: list[str], nested: dict[str, str]) -> str | None:
    """The valid key most like ``key``: one of this section's, or one a level down (``lr`` ->
    ``optim.lr``), whichever is more alike; None when nothing is close."""
    scored = [(difflib.SequenceMatcher(None, key, k).ratio(), k) for k in here]
    scored += [(difflib.SequenceMatcher(None, key, k).ratio() - 0.1, path) for k, path in nested.items()]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= 0.7 else None


def _nested_keys(schema: type[BaseModel], loc: tuple[Any, ...], valid: list[str]) -> dict[str, str]:
    """Keys of the sub-sections at ``loc``, each mapped to its path from ``loc`` (``optim.lr``)."""
    found: dict[str, str] = {}
    for name in valid:
        for sub in _valid_keys(schema, (*loc, name)):
            found.setdefault(sub, f"{name}.{sub}")
    return found


def _valid_keys(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at ``loc`` (walking nested models and lists)."""
    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
