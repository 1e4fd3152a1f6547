"""The learner side of the online loop: the no-gradient passes a step needs before its update
(old / reference log-probs, entropy, critic values), and the update itself (policy and critic,
epochs x mini-batches x micro-batches).

Every algorithmic choice is a registry call: the policy loss, the KL estimator, the
aggregation; the token masks and mismatch correction were applied to the batch beforehand.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rewardlab.algorithms import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rewardlab.algorithms.value import value_loss
from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig
from rewardlab.models.loading import is_lora
from rewardlab.models.logprobs import forward_completion_logits, token_entropy, token_logprobs
from rewardlab.trainers.common import clip_and_step, step_seed

if TYPE_CHECKING:
    from rewardlab.distributed.parallel import DataParallel


@dataclass
class Critic:
    """The value model with its optimizer (and a constant schedule, for ``clip_and_step``)."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_critic(policy: Any, config: RunConfig) -> Critic:
    from rewardlab.models.value import make_value_model

    model = make_value_model(policy)
    optim = config.algorithm.critic.optim
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
    )
    return Critic(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))


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
def reference_mode(reference: Any) -> Iterator[Any]:
    """The reference policy: with LoRA, the policy with its adapter switched off."""
    with reference.disable_adapter() if is_lora(reference) else nullcontext():
        yield reference




@torch.no_grad()
def critic_values(critic: Critic, batch: RolloutBatch, micro_batch: int) -> torch.Tensor:
    critic.model.eval()
    values = [critic.model.completion_values(batch.select(i)) for i in _plain_slices(batch.size, micro_batch)]
    return torch.cat(values).float()


# --------------------------------------------------------------------------- slicing


def _plain_slices(size: int, chunk: int) -> list[torch.Tensor]:
    return [torch.arange(lo, min(lo + chunk, size)) for lo in range(0, size, chunk)]


def batch_slices(
    group: torch.Tensor, order: torch.Tensor, size: int, whole_groups: bool
) -> list[torch.Tensor]:
    """Row indices of consecutive chunks of at most ``size`` rows, visiting rows in ``order``.

    With ``whole_groups`` a chunk never splits a prompt's group (a loss that compares the
    completions of a prompt, such as ``disco``, needs all of them at once): groups are packed
    whole, in the order their first row appears in ``order``, and a group larger than ``size``
    makes a chunk of its own.
    """
    if not whole_groups:
        return [order[lo : lo + size] for lo in range(0, len(order), size)]
    ordered_groups: dict[int, list[int]] = {}
    for row in order.tolist():
        ordered_groups.setdefault(int(group[row]), []).append(row)
    chunks: list[list[int]] = []
    for rows in ordered_groups.values():
        if chunks and len(chunks[-1]) + len(rows) <= size:
            chunks[-1].extend(rows)
        else:
            chunks.append(list(rows))
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


def _shuffled_order(batch: RolloutBatch, rng: torch.Generator, whole_groups: bool) -> torch.Tensor:
    """A random visiting order of the rows; with ``whole_groups`` the groups are shuffled and a
    group's rows stay together."""
    if not whole_groups:
        return torch.randperm(batch.size, generator=rng)
    ids = torch.unique(batch.group)
    rows = [torch.nonzero(batch.group == ids[i]).flatten() for i in torch.randperm(len(ids), generator=rng)]
    return torch.cat(rows)


def loss_needs_whole_groups(config: RunConfig) -> bool:
    assert config.algorithm.policy_loss and config.algorithm.policy_loss.name
    return "group" in POLICY_LOSSES.get(config.algorithm.policy_loss.name).inputs


def is_on_policy(config: RunConfig, size: int) -> bool:
    """One gradient step per rollout: the sampling policy is the policy being differentiated."""
    mini = config.train.mini_batch_size
    return config.train.ppo_epochs == 1 and (mini is None or mini >= size)


# --------------------------------------------------------------------------- update


def update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: RolloutBatch,
    config: RunConfig,
    step: int,
    coefs: dict[str, float],
    critic: Critic | None = None,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Several epochs of policy-gradient steps over mini-batches of ``batch``.

    Each mini-batch is one optimizer step, accumulated over micro-batches; the aggregation
    divides by the mini-batch's totals so accumulation does not change the gradient. The critic
    (if any) takes one step per mini-batch too. ``coefs`` holds this step's KL and entropy
    coefficients (adaptive ones change between steps).

    With ``parallel`` (data-parallel learners, ``rewardlab.distributed``) every rank runs this
    same loop on the same batch but computes only its share of each mini-batch; the summed
    gradients and statistics are those of one learner doing all of it, because the loss of
    each micro-batch is already divided by the whole mini-batch's totals.
    """
    train = config.train
    size = batch.size
    mini = min(train.mini_batch_size or size, size)
    whole = loss_needs_whole_groups(config)
    order_rng = torch.Generator().manual_seed(step_seed(config.seed, step, salt=1))
    loss_seed = step_seed(config.seed, step, salt=4)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    policy.train()
    num_steps = 0
    for _ in range(train.ppo_epochs):
        shuffle = not is_on_policy(config, size)
        order = _shuffled_order(batch, order_rng, whole) if shuffle else torch.arange(size)
        for mini_index in batch_slices(batch.group, order, mini, whole):
            mini_batch = batch.select(mini_index)
            loss_mask = mini_batch.loss_mask if mini_batch.loss_mask is not None else mini_batch.completion_mask
            totals = {
                "total_tokens": float(loss_mask.sum().clamp(min=1)),
                "total_seqs": float(mini_batch.size),
                "max_len": config.rollout.max_new_tokens,
            }
            mine = torch.arange(mini_batch.size)
            if parallel is not None:
                mine = parallel.share(mini_batch.group, whole)
            micro = batch_slices(mini_batch.group, mine, train.micro_batch_size, whole) if mine.numel() else []
            for index in micro:
                part = mini_batch.select(index)
                loss, token_stats = micro_batch_loss(policy, part, totals, config, coefs, loss_seed)
                loss.backward()
                sums["loss"] += float(loss.detach())
                for name, (total, count) in token_stats.items():
                    sums[name] += total
                    counts[name] += count
            if parallel is not None:
                parallel.sum_gradients(policy)
            sums["grad_norm"] += clip_and_step(policy, optimizer, scheduler, train.optim.max_grad_norm)
            counts["grad_norm"] += 1
            if critic is not None:
                for name, value in critic_step(critic, mini_batch, totals, config).items():
                    sums[name] += value
                    counts[name] += 1
            num_steps += 1
    if parallel is not None:  # every rank saw part of the micro-batches; the norms are shared
        sums, counts = parallel.sum_statistics(sums, counts, shared=("grad_norm",))
    out = {"loss": sums.pop("loss", 0.0) / max(num_steps, 1), "lr": scheduler.get_last_lr()[0]}
    out |= {name: sums[name] / max(counts[name], 1.0) for name in sums}
    return out


def micro_batch_loss(
    policy: Any,
    part: RolloutBatch,
    totals: dict[str, float],
    config: RunConfig,
    coefs: dict[str, float],
    seed: int,
) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
    """The aggregated loss of one micro-batch and per-token statistics (sum, count)."""
    algo = config.algorithm
    assert algo.policy_loss and algo.aggregation and algo.kl
    logits = forward_completion_logits(policy, part, config.rollout.temperature)
    logp = token_logprobs(logits, part.completion_ids)
    fields = part.axis_fields() | {"logp": logp, "seed": seed}
    fields.setdefault("old_logp", logp.detach())
    per_token, loss_metrics = POLICY_LOSSES.call(algo.policy_loss.name, fields, algo.policy_loss.params)
    if part.is_weights is not None:
        per_token = per_token * part.is_weights
    entropy_coef = coefs.get("entropy", 0.0)
    entropy = token_entropy(logits) if entropy_coef > 0 else None
    stats = {"entropy": entropy.detach() if entropy is not None else token_entropy(logits.detach())}
    stats |= loss_metrics
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
    kl_coef = coefs.get("kl", 0.0)
    if algo.kl.placement == "loss" and kl_coef > 0 and part.ref_logp is not None:
        kl = KL_ESTIMATORS.call(algo.kl.name, fields, {})
        per_token = per_token + kl_coef * kl
        stats["kl"] = kl.detach()
    mask = (part.loss_mask if part.loss_mask is not None else part.completion_mask).to(per_token.dtype)
    agg_fields = {"loss": per_token, "mask": mask, **totals}
    loss = AGGREGATIONS.call(algo.aggregation.name, agg_fields, algo.aggregation.params)
    real = part.completion_mask.to(per_token.dtype)
    count = float(real.sum())
    return loss, {name: (float((v * real).sum()), count) for name, v in stats.items()}


def critic_step(
    critic: Critic, mini_batch: RolloutBatch, totals: dict[str, float], config: RunConfig
) -> dict[str, float]:
    """One optimizer step of the value model on a mini-batch (clipped value loss, token mean
    over the mini-batch, accumulated over micro-batches)."""
    assert mini_batch.values is not None and mini_batch.returns is not None
    critic.model.train()
    clip = config.algorithm.critic.value_clip
    loss_total = 0.0
    mask_all = mini_batch.completion_mask
    tokens = float(mask_all.sum().clamp(min=1))
    for index in _plain_slices(mini_batch.size, config.train.micro_batch_size):
        part = mini_batch.select(index)
        values = critic.model.completion_values(part).float()
        assert part.values is not None and part.returns is not None
        per_token = value_loss(values, part.values, part.returns, part.completion_mask, clip=clip)
        loss = (per_token * part.completion_mask).sum() / tokens
        loss.backward()
        loss_total += float(loss.detach())
    max_norm = config.algorithm.critic.optim.max_grad_norm
    grad_norm = clip_and_step(critic.model, critic.optimizer, critic.scheduler, max_norm)
    return {"critic/loss": loss_total, "critic/grad_norm": grad_norm}
