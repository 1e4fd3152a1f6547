"""Implicit process rewards: a PRM for free from an outcome-trained log-likelihood ratio.

"Free Process Rewards without Process Labels" (Implicit PRM, arXiv 2412.01981): parameterize
an outcome reward model as r(y) = beta * log(pi_phi(y) / pi_ref(y)) and train it on
response-level labels only; because the log-ratio is a sum over tokens, every prefix has a
value q_t = beta * sum_{i <= t} log(pi_phi(y_i) / pi_ref(y_i)), and the process reward of a
token (or step) is the difference of consecutive values, i.e. its own beta * log-ratio.

"Process Reinforcement through Implicit Rewards" (PRIME, arXiv 2502.01456) trains that PRM
*online* during RL, on the policy's rollouts and their outcome labels, with the cross-entropy
loss below, and combines the dense rewards with the outcome rewards through leave-one-out
(RLOO) baselines (``prime_advantages``; registered as the ``prime`` advantage).

Shapes: ``logp`` / ``ref_logp`` / ``mask`` [B, T] over completion tokens, ``ids`` [B, T]
step indices (``rewardlab.algorithms.credit.step_ids``), labels and rewards [B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewardlab.algorithms.advantages import ADVANTAGES
from rewardlab.algorithms.credit import step_sums
from rewardlab.algorithms.groups import group_count, group_sum


def implicit_token_rewards(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """[B, T] r_t = beta * (log pi_phi(y_t) - log pi_ref(y_t)), 0 on padding (arXiv 2412.01981)."""
    return beta * (logp.float() - ref_logp.float()) * mask.float()


def implicit_outcome_reward(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """[B] the implicit ORM's reward r(y) = beta * log(pi_phi(y) / pi_ref(y)) = sum_t r_t."""
    return implicit_token_rewards(logp, ref_logp, mask, beta=beta).sum(-1)


def implicit_step_rewards(token_rewards: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(step_rewards [B, S], step_mask [B, S])``: the token rewards summed within each step,
    r_k = q_{end(k)} - q_{end(k-1)}; they sum to the sequence's implicit reward."""
    return step_sums(token_rewards, ids)


def implicit_values(token_rewards: torch.Tensor) -> torch.Tensor:
    """[B, T] the prefix values q_t = sum_{i <= t} r_i (arXiv 2412.01981)."""
    return token_rewards.float().cumsum(-1)


def implicit_prm_ce_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """The implicit PRM's cross-entropy on outcome labels (mean over the rows).

    L = -[l log sigmoid(r(y)) + (1 - l) log(1 - sigmoid(r(y)))], r(y) = beta * sum_t
    log(pi_phi(y_t) / pi_ref(y_t)) and l the outcome label in [0, 1] (1 = correct): the CE
    variant of arXiv 2412.01981, and PRIME's online PRM loss (arXiv 2502.01456). Soft labels
    in (0, 1) are allowed (binary cross-entropy with a soft target).
    """
    reward = implicit_outcome_reward(logp, ref_logp, mask, beta=beta)
    return F.binary_cross_entropy_with_logits(reward, labels.float().clamp(0.0, 1.0))


def _leave_one_out_mean(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] the mean of ``values`` over the *other* rows of each row's group (0 if alone)."""
    count = group_count(group, values.dtype)
    others = (group_sum(values, group) - values) / (count - 1).clamp(min=1)
    return torch.where(count > 1, others, torch.zeros_like(values))


def prime_advantages(
    outcome_rewards: torch.Tensor,
    process_rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
) -> torch.Tensor:
    """PRIME's advantage: RLOO on the outcome plus a leave-one-out-baselined process return.

    A_t^i = sum_{s >= t} gamma^(s-t) [r_s^i - (1/(K-1)) sum_{j != i} R_p^j / |y^j|]
            + r_o^i - (1/(K-1)) sum_{j != i} r_o^j,
    with r_s the process reward of token s, R_p^j = sum_s r_s^j a completion's total process
    reward and |y^j| its length, K the group size. The structure (RLOO for both, a per-token
    baseline from the other samples' mean token reward, return-to-go of the process part) is
    from recall of PRIME (arXiv 2502.01456, eq. 5); the digests confirm only "RLOO-style,
    outcome + dense". Groups of one sample get no baselines.

    Checked against verl's PRIME recipe (``recipe/prime/prime_core_algos.py``): the outcome
    part is the same leave-one-out RLOO, and so is the process baseline (the other samples'
    mean token reward); verl additionally scales each token reward by K/(K-1) before
    subtracting it (i.e. ``r_s - mean_{j != i} + (r_s - mean_i)/(K-1)``) and whitens the
    advantages over the batch. Here the plain leave-one-out form is kept; whitening belongs
    to the advantage axis, not to this function.
    """
    m = mask.float()
    dense = process_rewards.float() * m
    lengths = m.sum(-1).clamp(min=1)
    baseline = _leave_one_out_mean(dense.sum(-1) / lengths, group)
    centered = (dense - baseline.unsqueeze(1)) * m
    returns = torch.zeros_like(centered)
    running = centered.new_zeros(centered.shape[0])
    for t in range(centered.shape[1] - 1, -1, -1):
        running = centered[:, t] + gamma * running
        returns[:, t] = running
    outcome = outcome_rewards.float()
    outcome_adv = outcome - _leave_one_out_mean(outcome, group)
    return (returns + outcome_adv.unsqueeze(1)) * m


def outcome_on_last_token(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] each row's reward on its last real token (how the loop places the outcome)."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    last = (mask.sum(-1) - 1).clamp(min=0).long()
    out[torch.arange(mask.shape[0]), last] = rewards.float()
    return out * mask.float()


@ADVANTAGES.register(
    "prime",
    paper="Process Reinforcement through Implicit Rewards (PRIME)",
    arxiv="2502.01456",
    formula="p_t = token_rewards_t - outcome on the last token; A_t = sum_{s>=t} gamma^(s-t) "
    "(p_s - loo_mean(P/|y|)) + r_o - loo_mean(r_o)",
)
def prime(
    rewards: torch.Tensor,
    token_rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
) -> torch.Tensor:
    """PRIME's advantage (arXiv 2502.01456, see ``prime_advantages``) inside the loop: the
    outcome is ``rewards``; the process part is whatever ``token_rewards`` holds besides the
    outcome on the last token (the configured process reward, and the KL penalty when
    ``kl.placement`` is ``reward``)."""
    process = token_rewards.float() - outcome_on_last_token(rewards, mask)
    return prime_advantages(rewards, process, group, mask, gamma=gamma)
