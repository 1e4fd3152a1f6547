"""The online loop's process reward (``algorithm.process_reward``): an implicit PRM whose
per-token rewards beta * log(pi_prm / pi_ref), summed per step, credit-transformed and placed
on each step's last token, are added to ``batch.token_rewards``; with ``update`` the PRM is
trained online on the outcome labels (PRIME). Its weights and optimizer state are saved in
every checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.algorithms.credit import apply_credit, place_on_step_ends, step_ids, token_texts
from rewardlab.algorithms.implicit_prm import (
    implicit_prm_ce_loss,
    implicit_step_rewards,
    implicit_token_rewards,
)
from rewardlab.batch import RolloutBatch
from rewardlab.config import ModelConfig, RunConfig
from rewardlab.errors import RewardlabError
from rewardlab.models.loading import load_policy
from rewardlab.models.logprobs import (
    batch_logprobs_and_entropy,
    forward_completion_logits,
    token_logprobs,
)
from rewardlab.trainers.common import clip_and_step
from rewardlab.trainers.learner import reference_mode


@dataclass
class ProcessRewardModel:
    """The implicit PRM pi_prm with its optimizer (and a constant schedule)."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: Any

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_process_reward_model(policy: Any, tokenizer: Any, config: RunConfig) -> ProcessRewardModel | None:
    """The run's PRM, or None without ``algorithm.process_reward``: a copy of the initial
    policy, or ``process_reward.model`` (which must share the policy's tokenizer)."""
    spec = config.algorithm.process_reward
    if spec is None:
        return None
    if spec.model is None:
        model = copy.deepcopy(policy)
    else:
        model, prm_tokenizer = load_policy(ModelConfig(name=spec.model, dtype=config.model.dtype), seed=config.seed)
        if prm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise RewardlabError(
                f"algorithm.process_reward.model: '{spec.model}' has a different tokenizer from "
                "the policy's; the implicit PRM scores the policy's tokens"
            )
    model.eval()  # no dropout: the rewards of a batch are deterministic
    params = [p for p in model.parameters() if p.requires_grad]
    if not spec.update:
        for p in params:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params or [torch.nn.Parameter(torch.zeros(1))], lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return ProcessRewardModel(model, optimizer, scheduler, tokenizer)


def process_token_rewards(
    prm: ProcessRewardModel, reference: Any, batch: RolloutBatch, config: RunConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """[B, T] the credit-assigned process rewards on step ends (times ``coef``) and metrics.

    The rewards come from the PRM as it is before this step's update (PRIME's single forward
    pass: the same forward gives the rewards and the CE loss's gradient). Log-probs are taken
    at temperature 1 (the models' own distributions).
    """
    spec = config.algorithm.process_reward
    assert spec is not None and batch.rewards is not None
    mask = batch.completion_mask.float()
    micro = config.train.micro_batch_size
    with reference_mode(reference) as ref:
        ref_logp, _ = batch_logprobs_and_entropy(ref, batch, 1.0, micro)
    labels = batch.rewards.float().clamp(0.0, 1.0)
    logps, loss_total = [], 0.0
    for start in range(0, batch.size, micro):
        index = torch.arange(start, min(start + micro, batch.size))
        part = batch.select(index)
        with torch.set_grad_enabled(spec.update):
            logits = forward_completion_logits(prm.model, part, 1.0)
            logp = token_logprobs(logits, part.completion_ids)
            if spec.update:
                loss = implicit_prm_ce_loss(
                    logp, ref_logp[index], part.completion_mask, labels[index], beta=spec.beta
                ) * (part.size / batch.size)
                loss.backward()
                loss_total += float(loss.detach())
        logps.append(logp.detach())
    logp = torch.cat(logps)
    metrics: dict[str, float] = {}
    if spec.update:
        grad_norm = clip_and_step(prm.model, prm.optimizer, prm.scheduler, spec.max_grad_norm)
        metrics |= {"process_reward/ce_loss": loss_total, "process_reward/grad_norm": grad_norm}
    tokens = implicit_token_rewards(logp, ref_logp, mask, beta=spec.beta)
    ids = step_ids(token_texts(prm.tokenizer, batch.completion_ids, batch.completion_mask), spec.separator, mask.shape[1])
    steps, step_mask = implicit_step_rewards(tokens, ids)
    credited = apply_credit(steps, step_mask, batch.rewards, spec.credit)
    dense = spec.coef * place_on_step_ends(credited, ids) * mask
    sequence = tokens.sum(-1)
    metrics |= {
        "process_reward/implicit": float(sequence.mean()),
        "process_reward/accuracy": float(((sequence > 0).float() == (labels > 0.5).float()).float().mean()),
        "process_reward/steps": float(step_mask.sum(-1).mean()),
        "process_reward/step_reward": float(steps.sum() / step_mask.sum().clamp(min=1)),
        "process_reward/credited": float(dense.sum(-1).mean()),
    }
    return dense, metrics
