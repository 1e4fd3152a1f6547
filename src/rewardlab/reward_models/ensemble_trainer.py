"""Training a reward-model ensemble (``ensemble.members`` > 1 in an ``rm train`` config).

Members are trained one after another with the single model's loop
(:func:`rewardlab.reward_models.trainer.fit`); their steps are logged one after another too,
under ``member{k}/`` (``member0/loss``, ...), so ``metrics.jsonl`` holds K * steps training
lines. Evaluations (before and after) report the aggregated ensemble as ``eval/...`` plus
``eval/member{k}/accuracy``, ``eval/member_accuracy_mean`` and ``eval/disagreement``.

Modes (see :class:`rewardlab.reward_models.config.RewardEnsembleConfig`):

* ``seeds`` / ``bootstrap``: member k is a full model seeded ``seed + k``; ``bootstrap`` also
  trains it on n pairs drawn with replacement. ``train.max_seconds`` is split evenly, so every
  member gets trained.
* ``heads``: one backbone, frozen, and K heads. The pooled features of every training text
  are computed once; each head then trains on its bootstrap resample from those cached
  features, so K heads cost about one backbone pass over the data.

Every member's head starts from its own random perturbation (``ensemble.head_init_std``) of
the loaded head (zero for a fresh backbone): with identical starts and a pretrained backbone,
``seeds`` members would differ only in their pair order.

Checkpoints (``checkpoint.every`` steps of the run) hold every member's trainable weights
(whole models, or the heads), the training member's optimizer and schedule, and in ``extra``
which member was training and how many steps each earlier one took; ``--resume`` restores
them, skips the members already trained and continues the current one exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch

from rewardlab.checkpoint import latest_checkpoint, load_checkpoint, read_trainer_state
from rewardlab.errors import (
    ConfigError,
    RegistryError,
    RewardlabError,
    final_model_hint,
    writing_folder,
)
from rewardlab.reward_models.config import RewardModelConfig
from rewardlab.reward_models.data import RewardPair, heldout_reward_pairs, training_pairs
from rewardlab.reward_models.ensemble import Ensemble, check_aggregation, evaluate_members
from rewardlab.reward_models.evaluate import RewardEval, evaluate_pairs
from rewardlab.reward_models.model import RewardModel, load_reward_model
from rewardlab.reward_models.strength import prepare_strength
from rewardlab.reward_models.trainer import (
    EVAL_FILE,
    PairScorer,
    RewardModelResult,
    fit,
    make_optimization,
    model_scorer,
    open_sinks,
    steps_per_member,
    write_eval,
)
from rewardlab.tracking import close_all, write_report
from rewardlab.trainers.common import (
    FINAL_MODEL,
    Checkpoints,
    GracefulStop,
    StepCallback,
    log_metrics,
    seed_everything,
    start_run_dir,
)


def train_ensemble(
    config: RewardModelConfig,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> RewardModelResult:
    """Train ``ensemble.members`` reward models (or continue the run in ``resume`` from its
    newest checkpoint); ``final/`` is the saved :class:`Ensemble`."""
    spec = config.ensemble
    try:
        check_aggregation(spec.aggregation, spec.params, "ensemble.aggregation")
    except RegistryError as err:
        raise ConfigError(str(err)) from None
    run_dir = start_run_dir(config, resume, "rm", "train.epochs")
    seed_everything(config.seed)
    members = load_members(config)
    ensemble = Ensemble(members, spec.aggregation, spec.params)
    margin_column = config.loss.margin_column
    data = training_pairs(
        config.data, ensemble.tokenizer, config.seed, margin_column, require_margin=config.loss.use_margin
    )
    held = heldout_reward_pairs(config.data, ensemble.tokenizer, config.seed, margin_column)
    data.pairs, strength = prepare_strength(data.pairs, config.strength)
    saved = torch.nn.ModuleList(members)  # a checkpoint holds every member
    per_member = steps_per_member(len(data.pairs), config)
    position = resume_position(run_dir) if resume is not None else Position()
    sinks = open_sinks(config, run_dir, position.step if resume is not None else None)
    result = RewardModelResult(run_dir, skipped_rows=data.skipped, strength=strength)
    budget = config.train.max_seconds / spec.members if config.train.max_seconds else None

    def evaluate(step: int) -> RewardEval:
        found = evaluate_members(
            ensemble, held, batch_size=config.eval.batch_size,
            bins=config.eval.calibration_bins, buckets=config.eval.buckets,
        )
        log_metrics(sinks, step, found.metrics | (strength if step == 0 else {}), None)
        return found

    if on_start:
        on_start(position.step, spec.members * per_member)
    scorers = head_scorers(members, data.pairs, config) if spec.mode == "heads" else None
    stop = GracefulStop().start()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
    try:
        if resume is None:
            result.first_eval = evaluate(0).metrics
        started = time.perf_counter()
        done: list[int] = []  # steps each finished member took
        for k, member in enumerate(members):
            if k < position.member:  # trained before the checkpoint; its weights were restored
                done.append(position.member_steps[k])
                continue
            seed = config.seed + k
            pairs = data.pairs if spec.mode == "seeds" else bootstrap(data.pairs, seed)
            trained: torch.nn.Module = member.head if scorers else member
            optimizer, scheduler = make_optimization(trained, len(pairs), config)
            start = 0
            if resume is not None and k == position.member:
                start = load_checkpoint(position.folder, saved, optimizer, scheduler).step - sum(done)
            checkpoints = Checkpoints(
                run_dir, config.checkpoint.every, config.checkpoint.keep, stop, start, saved=saved,
                first_step=sum(done), total=spec.members * per_member,
                extra={"member": k, "member_steps": list(done)},
            )
            done.append(fit(
                trained, scorers[k] if scorers else model_scorer(member), pairs, config,
                seed=seed, sinks=sinks, on_step=on_step, first_step=sum(done),
                prefix=f"member{k}/", evaluate=_member_eval(member, held, config), max_seconds=budget,
                optimization=(optimizer, scheduler), checkpoints=checkpoints,
            ))
        result.steps = sum(done)
        result.seconds = time.perf_counter() - started
        last = evaluate(result.steps)
        result.last_eval = last.metrics
    finally:
        stop.close()
        close_all(sinks)
    with writing_folder("the final model", run_dir / FINAL_MODEL, final_model_hint(run_dir)):
        ensemble.save(run_dir / FINAL_MODEL)
    write_eval(run_dir / EVAL_FILE, last, strength)
    write_report(run_dir)
    return result


@dataclass
class Position:
    """Where a resumed ensemble run continues: the checkpoint, its step, the member that was
    training and the steps of the members before it."""

    folder: Path | None = None
    step: int = 0
    member: int = 0
    member_steps: list[int] = dc_field(default_factory=list)


def resume_position(run_dir: Path) -> Position:
    """The newest checkpoint's position (read before the models are restored from it)."""
    folder = latest_checkpoint(run_dir)
    state = read_trainer_state(folder)
    extra = state.get("extra", {})
    if not {"member", "member_steps"} <= set(extra):
        raise RewardlabError(
            f"{folder}: not an ensemble checkpoint (no member in its trainer state); resume with the "
            "run's own settings (ensemble.members as it was)"
        )
    return Position(folder, int(state["step"]), int(extra["member"]), [int(n) for n in extra["member_steps"]])


def load_members(config: RewardModelConfig) -> list[RewardModel]:
    """K members: K models (seeded ``seed + k``), or for ``heads`` one frozen backbone held by
    K ``RewardModel`` objects, each head perturbed with its own seed."""
    spec = config.ensemble
    if spec.mode == "heads":
        lead = load_reward_model(config.model, seed=config.seed)
        lead.backbone.requires_grad_(False)  # frozen: only the heads train
        members = [lead] + [
            RewardModel(lead.backbone, lead.tokenizer, lead.pooling, lead.max_length) for _ in range(spec.members - 1)
        ]
        for m in members[1:]:
            m.head.load_state_dict(lead.head.state_dict())
    else:
        members = []
        for k in range(spec.members):
            seed_everything(config.seed + k)
            members.append(load_reward_model(config.model, seed=config.seed + k))
    for k, m in enumerate(members):
        perturb_head(m, spec.head_init_std, config.seed + k)
    return members


def perturb_head(model: RewardModel, std: float, seed: int) -> None:
    """Add N(0, std^2) noise to the head's weight (the bias stays), from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noise = torch.randn(model.head.weight.shape, generator=generator, dtype=torch.float32)
        model.head.weight.add_(std * noise.to(model.head.weight.dtype))


def bootstrap(pairs: list[RewardPair], seed: int) -> list[RewardPair]:
    """n pairs drawn with replacement: about 63% of the distinct pairs, some repeated."""
    rng = random.Random(f"bootstrap-{seed}")  # its own stream: not the pair-order shuffle's
    return [pairs[rng.randrange(len(pairs))] for _ in range(len(pairs))]


@torch.no_grad()
def pooled_features(model: RewardModel, pairs: list[RewardPair], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's pooled features of every pair's chosen and rejected text, [N, H]."""
    model.eval()
    sides: list[torch.Tensor] = []
    for field in ("chosen", "rejected"):
        parts = []
        for lo in range(0, len(pairs), batch_size):
            part = pairs[lo : lo + batch_size]
            batch = model.encode([p.prompt for p in part], [getattr(p, field) for p in part])
            parts.append(model.features(**batch))
        sides.append(torch.cat(parts))
    return sides[0], sides[1]


def head_scorers(members: list[RewardModel], pairs: list[RewardPair], config: RewardModelConfig) -> list[PairScorer]:
    """One scorer per head over features cached once (the backbone is frozen, so they never
    change). A pair is found by identity: bootstrap samples hold the same objects."""
    chosen, rejected = pooled_features(members[0], pairs, config.eval.batch_size)
    rows = {id(p): i for i, p in enumerate(pairs)}

    def scorer(head: torch.nn.Module) -> PairScorer:
        def score(part: list[RewardPair]) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.tensor([rows[id(p)] for p in part])
            return head(chosen[index]).squeeze(-1), head(rejected[index]).squeeze(-1)

        return score

    return [scorer(m.head) for m in members]


def _member_eval(member: RewardModel, held: list[RewardPair], config: RewardModelConfig) -> Callable[[], dict[str, Any]]:
    """The in-training evaluation of one member (``eval.every``), logged as member{k}/eval/..."""

    def run() -> dict[str, Any]:
        return evaluate_pairs(
            member, held, batch_size=config.eval.batch_size,
            bins=config.eval.calibration_bins, buckets=config.eval.buckets,
        ).metrics

    return run

