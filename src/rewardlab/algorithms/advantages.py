"""Advantage estimators: rewards (one per sequence), group ids and masks -> advantage per token.

Outcome-reward estimators compute one number per sequence and broadcast it over that
sequence's completion tokens; padded positions get 0.
"""

from __future__ import annotations

import torch

from rewardlab.algorithms.groups import (
    group_count,
    group_index,
    group_mean,
    group_std,
    group_sum,
)
from rewardlab.errors import ConfigError
from rewardlab.registry import Registry

ADVANTAGES = Registry("advantage")


def _per_token(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return seq_adv[:, None] * mask.to(seq_adv.dtype)


@ADVANTAGES.register(
    "grpo",
    paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arxiv="2402.03300",
    formula="A_i = (r_i - mean(r_group)) / (std(r_group) + eps)",
)
def grpo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Group Relative Policy Optimization advantage (outcome supervision).

    DeepSeekMath (arXiv 2402.03300), section 4.1.2: each of the G completions of a prompt
    gets A_i = (r_i - mean(r)) / std(r), computed within its group. ``std`` is the unbiased
    sample standard deviation, as in TRL and verl; a group whose rewards are all equal has
    std 0 and gets advantage 0.
    """
    rewards = rewards.float()
    centered = rewards - group_mean(rewards, group)
    return _per_token(centered / (group_std(rewards, group) + eps), mask)


@ADVANTAGES.register(
    "dr_grpo",
    paper="Understanding R1-Zero-Like Training: A Critical Perspective",
    arxiv="2503.20783",
    formula="A_i = r_i - mean(r_group)",
)
def dr_grpo(rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage: the group mean baseline without division by the group std.

    "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv 2503.20783) shows
    that dividing by std(r) up-weights questions that are too easy or too hard (a difficulty
    bias) and drops it: A_i = r_i - mean(r_group).
    """
    rewards = rewards.float()
    return _per_token(rewards - group_mean(rewards, group), mask)


@ADVANTAGES.register(
    "rloo",
    paper="Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
    "Feedback in LLMs",
    arxiv="2402.14740",
    formula="A_i = r_i - (1/(G-1)) * sum_{j != i} r_j = G/(G-1) * (r_i - mean(r_group))",
)
def rloo(rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantage.

    Ahmadian et al. (arXiv 2402.14740), eq. for RLOO: the baseline of sample i is the mean
    reward of the other G-1 samples of the same prompt, A_i = r_i - mean_{j != i} r_j, which
    equals G/(G-1) * (r_i - mean(r_group)). Groups of one sample have no baseline and get 0.
    """
    rewards = rewards.float()
    count = group_count(group, rewards.dtype)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return _per_token(scale * (rewards - group_mean(rewards, group)), mask)


# --------------------------------------------------------------------------- batch statistics


def _batch_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the whole batch, summed relative to the maximum (as ``group_mean``), so a batch
    of equal values has exactly that value as its mean."""
    if values.numel() == 0:
        return values.new_zeros(())
    top = values.max()
    return top + (values - top).mean()


def _batch_std(values: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) standard deviation over the whole batch; 0 for one row."""
    centered = values - _batch_mean(values)
    return ((centered * centered).sum() / max(values.numel() - 1, 1)).sqrt()


# --------------------------------------------------------------------------- estimators


@ADVANTAGES.register(
    "reinforce",
    paper="Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement "
    "Learning (Williams, 1992; REINFORCE with a baseline)",
    arxiv=None,
    formula="A_i = r_i - mean(r_batch)",
)
def reinforce(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the batch-mean reward as baseline.

    Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning" (Machine Learning, 1992; not on arXiv): any baseline that does not
    depend on the action leaves the policy gradient unbiased; here it is the mean reward of the
    whole batch (every prompt and completion), A_i = r_i - mean_j r_j. Groups are ignored, so
    the advantages have zero mean over the batch, not within each group.
    """
    rewards = rewards.float()
    return _per_token(rewards - _batch_mean(rewards), mask)


@ADVANTAGES.register(
    "reinforce_pp",
    paper="REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    arxiv="2501.03262",
    formula="x_i = r_i (or r_i - mean(r_group) with group_baseline); "
    "A_i = (x_i - mean(x_batch)) / (std(x_batch) + eps)",
)
def reinforce_pp(
    rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_baseline: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ advantage: global (whole-batch) normalization instead of per-group.

    "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (arXiv 2501.03262) drops the critic and GRPO's per-prompt std and normalizes over the
    whole batch: A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps). With
    ``group_baseline=True`` (the "REINFORCE++-baseline" variant) the group mean is subtracted
    first, x_i = r_i - mean(r_group), and the group-centred rewards are then normalized by
    their batch std (their batch mean is already 0).

    ``std`` is the unbiased sample std over the sequences of the batch, as in ``grpo``.
    Not confirmed from the project's paper digests (they only say "batch normalization"):
    whether the paper normalizes over sequences or over tokens (which weights a sequence by
    its length), Bessel's correction, and the value of eps. The paper also folds a per-token
    KL penalty into the return; here KL stays a separate regularizer (``algorithm.kl``).
    """
    rewards = rewards.float()
    x = rewards - group_mean(rewards, group) if group_baseline else rewards
    centered = x - _batch_mean(x)
    return _per_token(centered / (_batch_std(x) + eps), mask)


@ADVANTAGES.register(
    "lite_ppo",
    paper="Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning (Lite PPO)",
    arxiv="2508.08221",
    formula="A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)",
)
def lite_ppo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Lite PPO advantage: group-level mean, batch-level std.

    "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (arXiv 2508.08221)
    recommends centring each reward on its group (prompt) mean and scaling by the std of the
    rewards of the whole batch, A_i = (r_i - mean(r_group)) / (std(r_batch) + eps). Unlike
    GRPO's group std, the batch std does not scale a group whose rewards barely differ up to
    unit spread. Lite PPO pairs it with token-level loss aggregation (the ``lite_ppo`` recipe).

    ``std`` is the unbiased sample std of the raw rewards over every sequence of the batch, as
    ``grpo``'s group std; with a single group this estimator equals ``grpo``. The project's
    digest marks this formula as taken from a secondary source: that the batch std is of the
    raw (not group-centred) rewards, and its Bessel correction, are not confirmed.
    """
    rewards = rewards.float()
    centered = rewards - group_mean(rewards, group)
    return _per_token(centered / (_batch_std(rewards) + eps), mask)


@ADVANTAGES.register(
    "opo",
    paper="On-Policy RL with Optimal Reward Baseline",
    arxiv="2505.23585",
    formula="b = sum_{j in group} l_j r_j / sum_{j in group} l_j;  A_i = r_i - b",
)
def opo(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """OPO advantage: the length-weighted group mean as baseline.

    "On-Policy RL with Optimal Reward Baseline" (arXiv 2505.23585): the variance-minimizing
    baseline weights each reward by the squared norm of its sequence's score-function
    gradient (as recalled, not checked against the paper); taking that squared norm
    proportional to the completion length l_j gives
    b = sum_j l_j r_j / sum_j l_j over the prompt's group and A_i = r_i - b. With equal lengths
    this is ``dr_grpo``. ``lengths`` are the completion token counts (``mask.sum(-1)``). A
    group whose completions are all empty (total length 0) falls back to the plain group mean;
    its advantages are masked to 0 anyway.

    Not confirmed from the project's paper digests (the paper is not in them): the formula
    above follows the request that added this entry; the paper's other ingredient, strictly
    on-policy training (one gradient step per batch), is a trainer setting, not part of this
    function.
    """
    rewards = rewards.float()
    weights = lengths.to(rewards.dtype)
    index, n = group_index(group)
    # Weighted mean relative to the group maximum, so a constant group gets exactly 0.
    top = rewards.new_zeros(n).scatter_reduce(0, index, rewards, "amax", include_self=False)[index]
    total = group_sum(weights, group)
    weighted = top + group_sum(weights * (rewards - top), group) / total.clamp(min=1e-12)
    baseline = torch.where(total > 0, weighted, group_mean(rewards, group))
    return _per_token(rewards - baseline, mask)


def _binom_ratio(top: torch.Tensor, bottom: torch.Tensor, k: int) -> torch.Tensor:
    """C(top, k) / C(bottom, k) for integer-valued float64 tensors with bottom >= k >= 0.

    Exact product form prod_{i<k} (top - i) / (bottom - i); a factor that reaches 0 (top < k)
    makes the ratio 0, as C(top, k) = 0 there. Shape [B, k] work, no loop over groups.
    """
    if k == 0:
        return torch.ones_like(top)
    i = torch.arange(k, dtype=top.dtype, device=top.device)
    factors = ((top[:, None] - i) / (bottom[:, None] - i)).clamp(min=0)
    return factors.prod(-1)


@ADVANTAGES.register(
    "passk",
    paper="Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large "
    "Reasoning Models",
    arxiv="2508.10751",
    formula="R = 1 - C(N-c,k)/C(N,k), sigma = sqrt(R(1-R)); correct: A = (1-R)/sigma; "
    "incorrect: A = (1 - R - C(N-c-1,k-1)/C(N-1,k-1))/sigma; sigma = 0 -> A = 0",
)
def passk(
    rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, *, k: int = 4
) -> torch.Tensor:
    """Pass@k training advantage (analytic form), for binary rewards.

    "Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning
    Models" (arXiv 2508.10751). A group of N samples with c correct (reward 1) is scored by
    the unbiased pass@k estimate R = 1 - C(N-c, k) / C(N, k), the mean reward of its
    k-subsets (a subset scores 1 if it holds a correct sample), with Bernoulli std
    sigma = sqrt(R (1 - R)). A sample's advantage is the mean reward of the k-subsets that
    contain it, minus R, over sigma:

    - correct samples:   A_pos = (1 - R) / sigma (every subset holding them scores 1);
    - incorrect samples: A_neg = (1 - R - C(N-c-1, k-1) / C(N-1, k-1)) / sigma (the ratio is
      the share of their subsets that hold no correct sample).

    sigma = 0 (no correct sample, or fewer than k incorrect ones so that every k-subset
    passes) gives advantage 0. The advantages sum to 0 within a group. With k = 1, R = c/N and
    the advantages are (r_i - mean(r_group)) / std(r_group) with the *population* std, i.e.
    GRPO without Bessel's correction.

    Rewards must be 0 or 1 and every group must have at least k samples (``ConfigError``
    otherwise). Not confirmed from the project's paper digests (the paper is not in them): the
    formulas above follow the request that added this entry and the derivation given here;
    the paper's equation numbers could not be checked.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"algorithm.advantage.params.k: passk needs an integer k >= 1, got {k!r}")
    rewards = rewards.float()
    if not ((rewards == 0) | (rewards == 1)).all():
        bad = rewards[(rewards != 0) & (rewards != 1)][0].item()
        raise ConfigError(
            f"the passk advantage needs binary rewards (0 or 1), got {bad}; use a 0/1 reward "
            "such as the task verifier, or another advantage"
        )
    n = group_count(group, torch.float64)
    if rewards.numel() and n.min().item() < k:
        raise ConfigError(
            f"algorithm.advantage.params.k: passk with k={k} needs at least k completions per "
            f"prompt, but a group has {int(n.min().item())}; raise rollout.num_generations or "
            "lower k"
        )
    correct = group_sum(rewards.double(), group)
    wrong = n - correct
    pass_k = 1.0 - _binom_ratio(wrong, n, k)
    sigma = (pass_k * (1.0 - pass_k)).sqrt()
    all_wrong_share = _binom_ratio(wrong - 1, n - 1, k - 1)
    raw = torch.where(rewards.bool(), 1.0 - pass_k, 1.0 - pass_k - all_wrong_share)
    adv = torch.where(sigma > 0, raw / torch.where(sigma > 0, sigma, 1.0), 0.0)
    return _per_token(adv.to(rewards.dtype), mask)


# --------------------------------------------------------------------------- BNPO

# Below this the batch's p(q) are all equal (up to rounding): the method-of-moments fit would be
# a point mass whose pdf is infinite at p = m, so BNPO falls back to the uniform Beta(1, 1).
_BNPO_MIN_VAR = 1e-12
_BNPO_MAX_WEIGHT = 1e6  # the authors' clamp on 1 / BetaPDF


def _scalar(value: float) -> torch.Tensor:
    """A float64 scalar on the CPU: state that can be checkpointed and logged as it is."""
    return torch.tensor(float(value), dtype=torch.float64)


def _bnpo_beta_params(mean: float, var: float) -> tuple[float, float]:
    """BNPO's normalizer parameters from the moments (m, v) of p(q).

    Method of moments for a Beta gives a = (m(1-m)/v - 1) m, b = (m(1-m)/v - 1)(1-m); BNPO
    shrinks them towards the uniform Beta(1, 1): alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1).
    A degenerate fit (v ~ 0, or m at 0 or 1) gives alpha = beta = 1.
    """
    if not (var > _BNPO_MIN_VAR and 0.0 < mean < 1.0):
        return 1.0, 1.0
    scale = mean * (1.0 - mean) / var - 1.0
    return max(1.0 + scale * mean / 3.0, 1.0), max(1.0 + scale * (1.0 - mean) / 3.0, 1.0)


def _inverse_beta_pdf(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """clamp(1 / BetaPDF(p; alpha, beta), 0, 1e6) for float64 p in [0, 1].

    xlogy makes (alpha - 1) log p exactly 0 at alpha = 1, p = 0 (pdf finite there); with
    alpha > 1 the pdf is 0 at p = 0, 1/pdf = inf, and the clamp turns it into 1e6.
    """
    a = torch.tensor(alpha, dtype=torch.float64)
    b = torch.tensor(beta, dtype=torch.float64)
    log_norm = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    log_pdf = torch.xlogy(a - 1.0, p) + torch.xlogy(b - 1.0, 1.0 - p) - log_norm
    return torch.exp(-log_pdf).clamp(0.0, _BNPO_MAX_WEIGHT)


def _check_bnpo_params(momentum: float, reward_min: float, reward_max: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(
            f"algorithm.advantage.params.momentum: bnpo needs 0 <= momentum < 1, got {momentum!r}"
        )
    if not reward_max > reward_min:
        raise ConfigError(
            "algorithm.advantage.params: bnpo needs reward_max > reward_min, got "
            f"reward_min={reward_min!r}, reward_max={reward_max!r}"
        )


@ADVANTAGES.register(
    "bnpo",
    paper="BNPO: Beta Normalization Policy Optimization",
    arxiv="2506.02864",
    formula="x = (r - reward_min)/(reward_max - reward_min); p(q) = mean(x_group); m, v = mean, "
    "unbiased var of p(q) over the batch's groups (EMA over steps if momentum > 0); "
    "a = (m(1-m)/v - 1) m, b = (m(1-m)/v - 1)(1-m); alpha = max(1 + a/3, 1), "
    "beta = max(1 + b/3, 1); A = (x - p(q)) * clamp(1/BetaPDF(p(q); alpha, beta), 0, 1e6)",
)
def bnpo(
    rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    momentum: float = 0.0,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Beta Normalization Policy Optimization advantage; returns ``(advantages, new_state)``.

    "BNPO: Beta Normalization Policy Optimization" (arXiv 2506.02864). For binary rewards the
    success probability p(q) of a prompt is modelled as Beta-distributed across prompts; each
    advantage r - p(q) is divided by the Beta density at p(q), with the Beta's parameters fitted
    to the current batch, so the normalization adapts as the policy changes. As in the authors'
    code (``compute_bnpo_outcome_advantage`` in changyi7231/BNPO, checked by the project digest
    and re-read for this entry):

    - x = (r - reward_min) / (reward_max - reward_min), with *fixed* bounds (the authors' defaults
      0 and 1; they say an affine map makes the method usable for any bounded reward). Fixed
      rather than per-batch bounds, so one outlier cannot rescale every advantage; a reward
      outside the bounds is a ``ConfigError``. Advantages are in these scaled units.
    - p(q) = mean of x over the prompt's group; m, v = mean and unbiased variance of p(q) over
      the batch's groups (one value per group, not per row).
    - a = (m(1-m)/v - 1) m, b = (m(1-m)/v - 1)(1-m) (method of moments);
      alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1).
    - A = (x - p(q)) * clamp(1 / BetaPDF(p(q); alpha, beta), 0, 1e6), broadcast over tokens.

    Special cases: alpha = beta = 1 (uniform density) gives A = x - p(q), REINFORCE with the
    prompt's mean reward as baseline (numerically Dr. GRPO); alpha = beta = 3/2 gives
    1/pdf = (pi/8) / sqrt(p(1-p)), which for 0/1 rewards is pi/8 times GRPO's advantage with
    the population std (derivations in tests/test_advantages_zoo2.py). The abstract claims BNPO
    "generalizes both REINFORCE and GRPO under binary-valued reward settings"; the parameter
    values (1 and 3/2) are derived here and agree with a secondary summary of the paper, but the
    paper's own statement of them was not read.

    Degenerate cases (our choices; the authors' code gives NaN or differs):

    - fewer than two groups, or v ~ 0 (every group has the same p(q)), or m at 0 or 1:
      alpha = beta = 1. The authors' code does this for a single group (it sets m = 0, v = 1);
      with v = 0 it divides by zero.
    - p(q) in {0, 1}: every reward of that group equals p(q), so x - p(q) = 0 and A = 0 even
      where 1/pdf hits the 1e6 clamp.
    - a group of one row: its p(q) is its own reward, so A = 0 (the authors' code sets p(q) = 0
      for it instead, giving A = x/pdf(0)); its p(q) still enters m and v.

    State: ``state`` is ``{}`` on the first step, then the ``new_state`` of the previous call,
    ``{"alpha", "beta", "mean", "var", "steps"}`` as float64 scalar tensors: the normalizer
    used, the moments it was fitted to, and how many batches contributed moments.
    ``momentum = 0`` reproduces the paper (this batch only; ``state`` is ignored). ``momentum > 0``
    is our extension, not in the paper: m and v are exponential moving averages,
    m_t = momentum * m_{t-1} + (1 - momentum) * m_batch (same for v, averaged directly rather
    than through the second moment), so a small or uniform batch does not swing the
    normalizer; a batch with fewer than two groups leaves the moments unchanged.
    """
    _check_bnpo_params(momentum, reward_min, reward_max)
    device = rewards.device
    # Float64 on the CPU: [B] numbers, and the Beta density needs the precision near p = 0, 1.
    x = (rewards.detach().to("cpu", torch.float64) - reward_min) / (reward_max - reward_min)
    if not ((x >= 0.0) & (x <= 1.0)).all():
        bad = x[~((x >= 0.0) & (x <= 1.0))][0].item() * (reward_max - reward_min) + reward_min
        raise ConfigError(
            f"bnpo: reward {bad} lies outside [reward_min, reward_max] = [{reward_min}, "
            f"{reward_max}]; set algorithm.advantage.params.reward_min / reward_max to the "
            "reward's range"
        )
    group = group.detach().cpu()
    index, n_groups = group_index(group)
    p = group_mean(x, group)
    p_groups = torch.zeros(n_groups, dtype=torch.float64).scatter_(0, index, p)

    prev_steps = float(state["steps"]) if "steps" in state else 0.0
    have_batch = n_groups >= 2
    batch_mean = p_groups.mean().item() if have_batch else 0.0
    batch_var = p_groups.var().item() if have_batch else 0.0
    if momentum > 0.0 and prev_steps > 0.0:
        prev_mean, prev_var = float(state["mean"]), float(state["var"])
        if have_batch:
            mean = momentum * prev_mean + (1.0 - momentum) * batch_mean
            var = momentum * prev_var + (1.0 - momentum) * batch_var
        else:
            mean, var = prev_mean, prev_var
        fitted = True
    else:
        mean, var, fitted = batch_mean, batch_var, have_batch
    alpha, beta = _bnpo_beta_params(mean, var) if fitted else (1.0, 1.0)
    if not fitted:  # nothing learnt this step: carry the previous moments (if any) forward
        mean = float(state["mean"]) if "mean" in state else 0.0
        var = float(state["var"]) if "var" in state else 0.0
    steps = prev_steps + 1.0 if have_batch else prev_steps

    adv = (x - p) * _inverse_beta_pdf(p, alpha, beta)
    new_state = {
        "alpha": _scalar(alpha),
        "beta": _scalar(beta),
        "mean": _scalar(mean),
        "var": _scalar(var),
        "steps": _scalar(steps),
    }
    return _per_token(adv.to(device=device, dtype=torch.float32), mask), new_state


@ADVANTAGES.register(
    "bnpo_decomposed",
    paper="BNPO: Beta Normalization Policy Optimization (advantage decomposition)",
    arxiv="2506.02864",
    formula="A = (1/K) sum_k BNPO(r_k), each reward component k with its own alpha_k, beta_k "
    "(NaN scores count as 0)",
)
def bnpo_decomposed(
    scores: dict[str, torch.Tensor],
    group: torch.Tensor,
    mask: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    momentum: float = 0.0,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BNPO advantage decomposition for multi-component rewards; returns ``(adv, new_state)``.

    "BNPO: Beta Normalization Policy Optimization" (arXiv 2506.02864): with a reward made of
    several parts (the authors' code uses accuracy and format, each 0/1), the BNPO advantage
    is computed for each component r_k separately, with its own Beta normalizer, and the K
    advantages are averaged: A = (1/K) sum_k BNPO(r_k). Components are visited in sorted name
    order. See ``bnpo`` for the per-component formula, the degenerate cases and ``momentum``.

    ``scores`` maps a component name to its [B] scores (``RolloutBatch.scores``). A NaN score
    (component not applicable to that row) counts as 0 (our choice; the authors' components
    apply to every row), so 0 must lie within [reward_min, reward_max], which are shared by all
    components. ``state`` holds each component's ``bnpo`` state under "<name>/<key>", e.g.
    "accuracy/alpha"; ``{}`` on the first step.
    """
    if not scores:
        raise ConfigError("bnpo_decomposed needs at least one reward component in the scores")
    total: torch.Tensor | None = None
    new_state: dict[str, torch.Tensor] = {}
    for name in sorted(scores):
        values = scores[name]
        values = torch.where(torch.isnan(values), torch.zeros_like(values), values)
        prefix = f"{name}/"
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        adv, own_new = bnpo(
            values,
            group,
            mask,
            own,
            momentum=momentum,
            reward_min=reward_min,
            reward_max=reward_max,
        )
        total = adv if total is None else total + adv
        new_state.update({prefix + k: v for k, v in own_new.items()})
    assert total is not None
    return total / len(scores), new_state


# --------------------------------------------------------------------------- ReMax


@ADVANTAGES.register(
    "remax",
    paper="ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning "
    "Large Language Models",
    arxiv="2310.10505",
    formula="A_i = r_i - r(x_i, greedy completion of x_i)",
)
def remax(
    rewards: torch.Tensor, baseline_rewards: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """ReMax advantage: the reward of the prompt's greedy completion as baseline.

    "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large
    Language Models" (arXiv 2310.10505): REINFORCE for one sampled completion per prompt, with
    the reward of the greedily decoded completion of the same prompt as a variance-reducing
    baseline, A_i = r(x_i, y_i) - r(x_i, y_greedy(x_i)). The baseline depends on the prompt
    only, not on the sampled y_i, so the gradient stays unbiased.

    ``baseline_rewards`` [B] is row i's greedy reward (the trainer decodes each prompt greedily
    once and repeats its reward over the prompt's rows). verl's ``remax`` estimator subtracts it
    from the reward-to-go of every token; with one outcome reward per sequence that is this
    number on every token. Not confirmed from the project's digests (they name ReMax only as a
    baseline): the formula follows the request that added this entry and verl's code; the
    paper's text was not read.
    """
    rewards = rewards.float()
    return _per_token(rewards - baseline_rewards.to(rewards), mask)


# --------------------------------------------------------------------------- GAE


def _gae_raw(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unwhitened GAE advantages and the masked values, both [B, T], 0 on padding."""
    m = mask.to(torch.float32)
    # Masking both makes V beyond the last real token 0 (and ignores whatever the critic put
    # on padding), so the recursion below needs no per-row end index.
    r = token_rewards.detach().float() * m
    v = values.detach().float() * m
    adv = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])
    next_value = r.new_zeros(r.shape[0])
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
        next_value = v[:, t]
    return adv * m, v


def gae_returns(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """The critic's regression target: unwhitened GAE advantages plus values, [B, T].

    Generalized Advantage Estimation (Schulman et al., "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", arXiv 1506.02438): the lambda-return
    R_t = A_t^{GAE(gamma, lam)} + V_t, as PPO for RLHF regresses the value head on
    (TRL and verl compute returns = advantages + values before whitening the advantages).
    With lam = 1 it is the discounted reward-to-go; 0 on padding.
    """
    adv, v = _gae_raw(token_rewards, values, mask, gamma, lam)
    return adv + v


@ADVANTAGES.register(
    "gae",
    paper="High-Dimensional Continuous Control Using Generalized Advantage Estimation (as used "
    "by PPO for RLHF: Ouyang et al. 2022; Ziegler et al. 2019)",
    arxiv="1506.02438; 2203.02155; 1909.08593",
    formula="delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last real token); "
    "A_t = sum_l (gamma lam)^l delta_{t+l}; whiten: (A - mean)/sqrt(var_unbiased + 1e-8) "
    "over the batch's real tokens",
)
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
) -> torch.Tensor:
    """Generalized Advantage Estimation per token, for PPO with a critic.

    Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation" (arXiv 1506.02438), eq. 16: with TD errors
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l}.
    lam = 0 gives the one-step TD error, lam = 1 the Monte-Carlo return minus V_t. PPO for
    RLHF (Ziegler et al., arXiv 1909.08593; Ouyang et al., InstructGPT, arXiv 2203.02155)
    applies it per token: the state is the prompt plus the tokens so far, the action the next
    token, and the reward r_t is the outcome reward on the last real token, usually minus a
    per-token KL penalty (``token_rewards``, [B, T]); ``values`` [B, T] are the critic's
    estimates at each completion position (``ValueModel.completion_values``). The value after
    the last real token (a terminal state) is 0; padding gets advantage 0. Computed with a
    reverse loop over T, vectorized over the batch.

    ``whiten=True`` normalizes over every real token of the batch as TRL's and verl's
    ``masked_whiten`` do: (A - mean) / sqrt(var + 1e-8) with the Bessel-corrected variance,
    without adding the mean back. OpenRLHF's normalization was not checked. The critic's
    target (returns) uses the unwhitened advantages: see ``gae_returns``.
    """
    adv, _ = _gae_raw(token_rewards, values, mask, gamma, lam)
    if not whiten:
        return adv
    m = mask.to(adv.dtype)
    count = m.sum()
    if count.item() == 0:
        return adv
    mean = (adv * m).sum() / count
    centered = (adv - mean) * m
    var = (centered * centered).sum() / (count - 1).clamp(min=1)
    return centered * torch.rsqrt(var + 1e-8)
