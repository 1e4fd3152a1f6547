"""Process rewards per reasoning step: step segmentation and credit transforms.

A completion is cut into steps by a separator (``"\\n"`` by default): a token whose text
contains the separator closes the step it belongs to, and the last real token closes the last
step. ``step_ids`` gives every token its step index (-1 on padding); ``step_sums`` adds token
values up into step values [B, S]; ``place_on_step_ends`` puts step values back on the last
token of each step, the per-token form the advantage estimators read (``token_rewards``).

The ``credit`` axis (``CREDIT_TRANSFORMS``) holds pure functions over step rewards
``step_rewards`` [B, S] with ``step_mask`` [B, S] (1 on real steps, a prefix of each row) and
the outcome rewards ``outcome_rewards`` [B]; each returns new step rewards [B, S], 0 on
padding. They are applied in order (``algorithm.process_reward.credit``); none = ``sum``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rewardlab.registry import Registry

CREDIT_TRANSFORMS = Registry("credit")


# --------------------------------------------------------------------------- segmentation


def token_texts(tokenizer: Any, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """Each real completion token decoded on its own (what the separator is searched in)."""
    out = []
    for ids, m in zip(completion_ids.tolist(), mask.tolist(), strict=True):
        out.append([tokenizer.decode([i]) for i, keep in zip(ids, m, strict=True) if keep])
    return out


def step_ids(texts: Sequence[Sequence[str]], separator: str, width: int) -> torch.Tensor:
    """[B, width] step index of every token (0, 1, ...), -1 on padding.

    ``texts[b]`` are row b's real tokens as text (right-padded rows: token t of the row is
    column t). A token containing ``separator`` is the last token of its step; an empty
    separator makes the whole completion one step.
    """
    out = torch.full((len(texts), width), -1, dtype=torch.long)
    for b, row in enumerate(texts):
        step = 0
        for t, text in enumerate(row):
            out[b, t] = step
            if separator and separator in text:
                step += 1
    return out


def step_boundaries(texts: Sequence[Sequence[str]], separator: str, width: int) -> torch.Tensor:
    """[B, width] bool: True on the last token of each step (where a step reward is placed)."""
    return step_ends(step_ids(texts, separator, width))


def step_ends(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where the next token is in another step (or is padding / the end)."""
    following = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -1)], dim=1)
    return (ids >= 0) & (following != ids)


def num_steps(ids: torch.Tensor) -> torch.Tensor:
    """[B] steps per row (0 for an empty completion)."""
    return (ids.max(dim=1).values + 1).clamp(min=0)


def step_sums(values: torch.Tensor, ids: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token values [B, T] summed within each step: ``(step_values [B, S], step_mask [B, S])``.

    ``S`` is ``width`` or the largest step count of the batch (at least 1).
    """
    counts = num_steps(ids)
    size = width if width is not None else max(int(counts.max()) if counts.numel() else 0, 1)
    real = ids >= 0
    index = torch.where(real, ids, torch.zeros_like(ids))
    sums = torch.zeros(ids.shape[0], size, dtype=torch.float32)
    sums.scatter_add_(1, index, torch.where(real, values.float(), torch.zeros_like(values, dtype=torch.float32)))
    step_mask = (torch.arange(size).unsqueeze(0) < counts.unsqueeze(1)).float()
    return sums * step_mask, step_mask


def place_on_step_ends(step_values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, T]: each step's value on the step's last token, 0 elsewhere (inverse of ``step_sums``
    for values that sit on step ends)."""
    ends = step_ends(ids)
    index = torch.where(ids >= 0, ids, torch.zeros_like(ids)).clamp(max=step_values.shape[1] - 1)
    return torch.gather(step_values.float(), 1, index) * ends.float()


# --------------------------------------------------------------------------- credit transforms


@CREDIT_TRANSFORMS.register(
    "sum",
    paper="Sum-form credit (the usual gamma = 1 return of step rewards; the baseline that "
    "'Stop Summation' (PURE) compares against)",
    arxiv="2504.15275",
    formula="r'_k = r_k (return G_k = sum_{j>=k} r_j)",
)
def sum_form(step_rewards: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Step rewards unchanged: the return-to-go of step k is sum_{j >= k} r_j, the sum-form
    credit that "Stop Summation" (PURE, arXiv 2504.15275) shows invites reward hacking."""
    return step_rewards.float() * step_mask


@CREDIT_TRANSFORMS.register(
    "min_form",
    paper="Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for "
    "Reasoning (PURE)",
    arxiv="2504.15275",
    formula="w = softmax_k(-r_k / T) over the completion's steps; r'_k = w_k r_k "
    "(so sum_k r'_k -> min_k r_k as T -> 0)",
)
def min_form(step_rewards: torch.Tensor, step_mask: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """PURE's min-form credit assignment, as a reweighting of the step rewards.

    "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for
    Reasoning" (arXiv 2504.15275) defines a state's value as the *minimum* of the future step
    rewards instead of their sum, so a policy cannot gain by padding high-reward steps. As the
    project's digest reads PURE's code: w = softmax(-r / T) over the completion's steps
    (T = 0.1), r'_k = w_k * r_k, and returns are the reverse cumulative sum of r', so the
    first step's return is a soft minimum sum_k w_k r_k, exactly min_k r_k as T -> 0. The
    softmax runs over all of a completion's steps (not re-normalized per suffix), as in that
    code; a row with no steps gets zeros.
    """
    if temperature <= 0:
        raise ValueError("min_form: temperature must be > 0")
    r = step_rewards.float()
    real = step_mask > 0
    logits = torch.where(real, -r / temperature, torch.full_like(r, float("-inf")))
    has_steps = real.any(dim=1, keepdim=True)
    weights = torch.softmax(torch.where(has_steps, logits, torch.zeros_like(r)), dim=1)
    return torch.where(real, weights * r, torch.zeros_like(r))


@CREDIT_TRANSFORMS.register(
    "clip",
    paper="On Designing Effective RL Reward at Training Time for LLM Reasoning (Clip)",
    arxiv="2410.15115",
    formula="r'_k = min(r_k - eta, 0)",
)
def clip(step_rewards: torch.Tensor, step_mask: torch.Tensor, *, eta: float = 0.0) -> torch.Tensor:
    """The Clip mechanism: every step reward becomes non-positive, r'_k = min(r_k - eta, 0).

    "On Designing Effective RL Reward at Training Time for LLM Reasoning" (arXiv 2410.15115):
    a policy hacks a PRM by repeating correct but unnecessary steps; clipping the step reward
    at the threshold eta to at most 0 bounds the cumulative process reward from above (extra
    steps can only lower it). The default eta = 0 suits log-ratio (implicit PRM) rewards; for
    a PRM giving probabilities in [0, 1] the paper's eta should be set (its value was not
    checked from the paper: the digest gives only the formula).
    """
    return torch.clamp(step_rewards.float() - eta, max=0.0) * step_mask


@CREDIT_TRANSFORMS.register(
    "delta",
    paper="On Designing Effective RL Reward at Training Time for LLM Reasoning (Delta)",
    arxiv="2410.15115",
    formula="r'_k = r_k - r_{k+1} for k < K; r'_K = r_K (so sum_{j>=k} r'_j = r_k)",
)
def delta(step_rewards: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """The Delta mechanism: r'_k = r_k - r_{k+1}, the last step keeping r_K.

    "On Designing Effective RL Reward at Training Time for LLM Reasoning" (arXiv 2410.15115):
    the sum telescopes, so the return-to-go from step k is r_k itself and the whole
    completion's process return is the first step's reward, bounded however many steps are
    added.
    """
    r = step_rewards.float() * step_mask
    following = torch.cat([r[:, 1:], torch.zeros_like(r[:, :1])], dim=1)
    following_mask = torch.cat([step_mask[:, 1:], torch.zeros_like(step_mask[:, :1])], dim=1)
    return (r - following * following_mask) * step_mask


@CREDIT_TRANSFORMS.register(
    "gated",
    paper="Posterior-GRPO: Rewarding Reasoning Processes in Code Generation (P-GRPO); "
    "Stabilizing Long-term Multi-turn Reinforcement Learning with Gated Rewards (G-RA)",
    arxiv=None,
    formula="r'_k = r_k * 1[outcome >= threshold]",
)
def gated(
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    outcome_rewards: torch.Tensor,
    *,
    threshold: float = 1.0,
) -> torch.Tensor:
    """Outcome-gated process reward: step rewards count only for successful completions.

    Posterior-GRPO gives the process reward only to rollouts whose outcome succeeds, so a
    wrong answer cannot earn reward for plausible-looking reasoning; Gated Reward Accumulation
    (G-RA) accumulates step rewards only when the long-term (outcome) reward reaches a
    threshold. Here r'_k = r_k if outcome >= ``threshold`` (default 1.0: a 0/1 verifier's
    "correct") else 0. The project's digests give neither paper's arXiv id.
    """
    passed = (outcome_rewards.float() >= threshold).float().unsqueeze(1)
    return step_rewards.float() * step_mask * passed


def apply_credit(
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    outcome_rewards: torch.Tensor,
    choices: Sequence[Any],
) -> torch.Tensor:
    """The ``credit`` transforms ``choices`` (items with ``name`` and ``params``), in order."""
    out = step_rewards.float() * step_mask
    for choice in choices:
        fields: Mapping[str, Any] = {
            "step_rewards": out,
            "step_mask": step_mask,
            "outcome_rewards": outcome_rewards,
        }
        out = CREDIT_TRANSFORMS.call(choice.name, fields, choice.params)
    return out
