"""Reward shaping: more ``REWARD_TRANSFORMS`` entries, one source's scores [B] -> new scores [B].

Every entry here keeps NaN (the source does not apply to that row) as NaN and computes its
statistics (batch or group means, min/max, quantiles) over the rows that are not NaN. Outputs
are float32 on the rewards' device. Stateful entries (``normalize``) take ``state`` (a
``dict[str, Tensor]``, ``{}`` on the first step) and return ``(rewards, new_state)``; random
ones (``flip_noise``) draw from a local ``torch.Generator`` seeded with the step's ``seed``.

Entries and the batch fields they read (besides ``rewards``):

- ``clip``, ``minmax``, ``squash``, ``backward_correction``, ``forward_correction``: none;
- ``normalize``: ``state``;
- ``flip_noise``: ``seed``;
- ``log_sigmoid``, ``par``: ``group`` and ``reference_rewards`` (the latter may be ``None``; it is
  read only with ``reference="reference_rewards"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rewardlab.algorithms.groups import group_index
from rewardlab.algorithms.reward_transforms import REWARD_TRANSFORMS
from rewardlab.errors import ConfigError

_WHERE = "transforms[].params"

# The references a centred transform (log_sigmoid, and the ``and`` combiner) can use.
LOG_SIGMOID_REFERENCES = (
    "group_mean",
    "group_others",
    "group_quantile",
    "reference_rewards",
    "zero",
)
PAR_REFERENCES = ("group_others", "reference_rewards")


# --------------------------------------------------------------------------- helpers


def _scalar(value: float) -> torch.Tensor:
    """A float64 scalar on the CPU: state that can be checkpointed and logged as it is."""
    return torch.tensor(float(value), dtype=torch.float64)


def _valid(values: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(values)


def padded_groups(
    values: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each group's values as one row of a NaN-padded matrix.

    Returns ``(padded [G, M], index [B], position [B])``: group g's rows in batch order fill
    ``padded[g, :count_g]`` (the rest is NaN, as are rows whose value is NaN), and row b sits at
    ``padded[index[b], position[b]]``. M is the largest group size. Vectorized, no loop over
    groups; O(G * M) memory.
    """
    index, n = group_index(group)
    index = index.to(values.device)
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(index)
    position[order] = torch.arange(index.numel(), device=values.device) - starts[index[order]]
    width = int(counts.max().item()) if index.numel() else 0
    padded = torch.full((n, width), float("nan"), dtype=values.dtype, device=values.device)
    padded[index, position] = values
    return padded, index, position


def _others(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B, M]: for each row, the values of the *other* rows of its group (NaN elsewhere)."""
    padded, index, position = padded_groups(values, group)
    others = padded[index].clone()
    others[torch.arange(values.numel(), device=values.device), position] = float("nan")
    return others


def _check_quantile(quantile: float, who: str) -> None:
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"{_WHERE}.quantile: {who} needs 0 <= quantile <= 1, got {quantile!r}")


def _given_reference(
    rewards: torch.Tensor, reference_rewards: torch.Tensor | None, who: str
) -> torch.Tensor:
    """``reference_rewards`` as a float [B, M] matrix (a [B] column becomes M = 1)."""
    if reference_rewards is None:
        raise ConfigError(
            f"{_WHERE}.reference: {who} with reference='reference_rewards' needs a per-prompt "
            "reference reward (the batch field 'reference_rewards', e.g. a dataset column), but "
            "this run provides none; use reference='group_others' (or another group reference)"
        )
    ref = torch.as_tensor(reference_rewards).to(device=rewards.device, dtype=rewards.dtype)
    if ref.dim() == 1:
        ref = ref[:, None]
    if ref.dim() != 2 or ref.shape[0] != rewards.shape[0]:
        raise ConfigError(
            f"{who}: reference_rewards must have shape [B] or [B, M] with B = {rewards.shape[0]}, "
            f"got {tuple(ref.shape)}"
        )
    return ref


def centring_reference(
    rewards: torch.Tensor,
    group: torch.Tensor | None,
    reference_rewards: torch.Tensor | None,
    *,
    reference: str,
    quantile: float,
    who: str,
) -> torch.Tensor:
    """The per-row reference reward r_ref [B] a centred transform subtracts (NaN = none).

    - ``group_mean``: mean of the group's rewards (the row itself included);
    - ``group_others``: mean of the *other* rows of the group (leave-one-out);
    - ``group_quantile``: the ``quantile`` of the group's rewards (row included, linear
      interpolation between order statistics, as ``torch.nanquantile``);
    - ``reference_rewards``: the batch field; a [B] column as it is, a [B, M] matrix (M reference
      rewards per row, NaN-padded) summarized by its ``quantile``;
    - ``zero``: r_ref = 0 (the rewards are already centred).

    NaN rewards never enter a group statistic. Where no reference exists (a group whose other
    rows are all NaN, a NaN in ``reference_rewards``) the result is NaN; callers then centre the
    row on itself.
    """
    if reference not in LOG_SIGMOID_REFERENCES:
        raise ConfigError(
            f"{_WHERE}.reference: {who} has no reference {reference!r}; choose one of: "
            f"{', '.join(LOG_SIGMOID_REFERENCES)}"
        )
    _check_quantile(quantile, who)
    if reference == "zero":
        return torch.zeros_like(rewards)
    if reference == "reference_rewards":
        ref = _given_reference(rewards, reference_rewards, who)
        if ref.shape[1] == 1:
            return ref[:, 0]
        return torch.nanquantile(ref.double(), quantile, dim=1).to(rewards.dtype)
    if group is None:
        raise ConfigError(f"{who} with reference={reference!r} needs the batch field 'group'")
    if reference == "group_others":
        return torch.nanmean(_others(rewards, group), dim=1)
    padded, index, _ = padded_groups(rewards, group)
    if reference == "group_mean":
        return torch.nanmean(padded, dim=1)[index]
    return torch.nanquantile(padded.double(), quantile, dim=1).to(rewards.dtype)[index]


def _check_rate(name: str, value: float, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{_WHERE}.{name}: {who} needs a rate in [0, 1], got {value!r}")
    return float(value)


def _check_binary(rewards: torch.Tensor, who: str) -> None:
    ok = torch.isnan(rewards) | (rewards == 0) | (rewards == 1)
    if not ok.all():
        bad = rewards[~ok][0].item()
        raise ConfigError(
            f"{who} needs a binary reward (0 or 1, NaN = not applicable), got {bad}; apply it "
            "to a 0/1 verifier source, before any transform that rescales it"
        )


# --------------------------------------------------------------------------- simple maps


@REWARD_TRANSFORMS.register(
    "clip",
    paper="(standard) reward clipping",
    formula="r' = clamp(r, min, max)",
)
def clip(
    rewards: torch.Tensor, *, min: float | None = None, max: float | None = None
) -> torch.Tensor:
    """Clip the rewards to [min, max] (either bound may be omitted; NaN stays NaN).

    A standard trick rather than one paper's method; "Reward Shaping to Mitigate Reward Hacking
    in RLHF" (arXiv 2502.18770) compares a variant that clips at the running mean +- one std,
    which is ``normalize`` followed by ``clip(min=-1, max=1)`` up to the affine map.
    """
    if min is None and max is None:
        raise ConfigError(f"{_WHERE}: clip needs 'min' and/or 'max'")
    if min is not None and max is not None and min > max:
        raise ConfigError(f"{_WHERE}: clip needs min <= max, got min={min!r}, max={max!r}")
    return rewards.float().clamp(min=min, max=max)


@REWARD_TRANSFORMS.register(
    "minmax",
    paper="(standard) min-max scaling",
    formula="r' = (r - lo) / (hi - lo), lo/hi = the batch min/max of r or fixed bounds; "
    "0 when hi == lo",
)
def minmax(
    rewards: torch.Tensor,
    *,
    min: float | None = None,
    max: float | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """Scale the rewards to [0, 1]: r' = (r - lo) / (hi - lo).

    ``lo`` is ``min`` if given, else the smallest non-NaN reward of the batch; ``hi`` likewise
    with ``max``. With both bounds from the batch the result spans exactly [0, 1]; with fixed
    bounds a reward outside them is clamped to [0, 1] unless ``clamp=False``. A batch whose
    non-NaN rewards are all equal (hi == lo) maps to 0 (as the PAR authors' running min-max,
    which divides by max(hi - lo, 1e-8)). Their baseline uses the running min/max over training;
    this entry uses the batch or fixed bounds.
    """
    x = rewards.float()
    valid = _valid(x)
    if not valid.any():
        return x.clone()
    lo = x[valid].min() if min is None else x.new_tensor(float(min))
    hi = x[valid].max() if max is None else x.new_tensor(float(max))
    if hi < lo:
        raise ConfigError(
            f"{_WHERE}: minmax needs min <= max, got min={lo.item()}, max={hi.item()}"
        )
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))
    if clamp:
        out = out.clamp(0.0, 1.0)
    return torch.where(valid, out, x)


@REWARD_TRANSFORMS.register(
    "squash",
    paper="(standard) bounded squashing; compared as a baseline in 'Reward Shaping to Mitigate "
    "Reward Hacking in RLHF'",
    arxiv="2502.18770",
    formula="r' = tanh((r - center) / scale) or sigmoid((r - center) / scale)",
)
def squash(
    rewards: torch.Tensor,
    *,
    kind: str = "tanh",
    scale: float = 1.0,
    center: float = 0.0,
) -> torch.Tensor:
    """Squash the rewards into a bounded range: tanh((r - center)/scale) in (-1, 1) or
    sigmoid((r - center)/scale) in (0, 1). Listed as a baseline in "Reward Shaping to
    Mitigate Reward Hacking in RLHF" (arXiv 2502.18770).

    ``scale`` is in reward units: rewards further than a few ``scale`` from ``center`` saturate.
    The PAR authors' code has these as uncentred baselines (``sigmoid(k * r)``, ``tanh(r)``),
    i.e. ``scale = 1/k``, ``center = 0``.
    """
    if kind not in ("tanh", "sigmoid"):
        raise ConfigError(f"{_WHERE}.kind: squash needs kind 'tanh' or 'sigmoid', got {kind!r}")
    if not scale > 0:
        raise ConfigError(f"{_WHERE}.scale: squash needs scale > 0, got {scale!r}")
    z = (rewards.float() - center) / scale
    return torch.tanh(z) if kind == "tanh" else torch.sigmoid(z)


# --------------------------------------------------------------------------- running normalization


@REWARD_TRANSFORMS.register(
    "normalize",
    paper="(standard) running reward normalization; the 'mean/std' baseline of 'Reward Shaping "
    "to Mitigate Reward Hacking in RLHF'",
    arxiv="2502.18770",
    formula="r' = (r - mu) / max(sigma, eps); mu, sigma^2 = running mean and population variance "
    "of every reward seen so far (this batch included), exact (Chan/Welford merge) or EMA",
)
def normalize(
    rewards: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    momentum: float | None = None,
    per_batch: bool = False,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Running mean/std normalization; returns ``(rewards, new_state)``. The mean/std
    baseline of "Reward Shaping to Mitigate Reward Hacking in RLHF" (arXiv 2502.18770).

    r' = (r - mu) / max(sigma, eps), where mu and sigma^2 (population variance) are statistics
    of the rewards seen over training, *including this batch* (updated first, then applied, as
    the PAR authors' ``RunningMeanStd``). NaN rewards are skipped and stay NaN.

    - ``momentum=None`` (default): exact running moments over every reward so far, merged batch
      by batch with Chan et al.'s parallel form of Welford's update:
      n = n_a + n_b, delta = mean_b - mean_a, mean = mean_a + delta n_b / n,
      M2 = M2_a + M2_b + delta^2 n_a n_b / n, var = M2 / n.
    - ``0 <= momentum < 1``: exponential moving averages, mean = m mean_a + (1-m) mean_b and
      var = m var_a + (1-m) var_b + m (1-m) (mean_b - mean_a)^2 (the variance of that mixture);
      the first batch initializes both.
    - ``per_batch=True``: this batch's own mean/std; ``state`` is returned unchanged.

    State: ``{"count", "mean", "var"}`` float64 scalars (``count`` = rewards seen). A batch with
    no non-NaN reward leaves it unchanged.
    """
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ConfigError(
            f"{_WHERE}.momentum: normalize needs 0 <= momentum < 1 (or null for exact running "
            f"statistics), got {momentum!r}"
        )
    if not eps > 0:
        raise ConfigError(f"{_WHERE}.eps: normalize needs eps > 0, got {eps!r}")
    x = rewards.float()
    valid = _valid(x)
    batch = x[valid].detach().double().cpu()
    n_b = batch.numel()
    b_mean = batch.mean().item() if n_b else 0.0
    b_var = batch.var(unbiased=False).item() if n_b else 0.0
    n_a = float(state["count"]) if "count" in state else 0.0
    a_mean = float(state["mean"]) if "mean" in state else 0.0
    a_var = float(state["var"]) if "var" in state else 0.0

    if per_batch:
        if n_b == 0:
            return x.clone(), dict(state)
        mean, var, new_state = b_mean, b_var, dict(state)
    else:
        if n_b == 0:
            mean, var, n = a_mean, a_var, n_a
        elif n_a == 0:
            mean, var, n = b_mean, b_var, float(n_b)
        elif momentum is None:
            n = n_a + n_b
            delta = b_mean - a_mean
            mean = a_mean + delta * n_b / n
            var = (a_var * n_a + b_var * n_b + delta * delta * n_a * n_b / n) / n
        else:
            m = momentum
            delta = b_mean - a_mean
            mean = m * a_mean + (1.0 - m) * b_mean
            var = m * a_var + (1.0 - m) * b_var + m * (1.0 - m) * delta * delta
            n = n_a + n_b
        new_state = {"count": _scalar(n), "mean": _scalar(mean), "var": _scalar(var)}
        if n == 0:  # nothing seen yet: nothing to normalize by
            return x.clone(), new_state
    std = max(math.sqrt(max(var, 0.0)), eps)
    return (x - mean) / std, new_state


# --------------------------------------------------------------------------- noise and corrections


@REWARD_TRANSFORMS.register(
    "flip_noise",
    paper="(robustness studies) binary reward flipped at random, as the noise channel of "
    "'Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers'",
    arxiv="2510.00915",
    formula="r' = 1 - r with probability fn_rate if r = 1, fp_rate if r = 0 (both = rate "
    "unless given); seeded",
)
def flip_noise(
    rewards: torch.Tensor,
    seed: int,
    *,
    rate: float = 0.0,
    fp_rate: float | None = None,
    fn_rate: float | None = None,
    seed_offset: int = 0,
) -> torch.Tensor:
    """Flip a binary (0/1) reward at random, to simulate an imperfect verifier: the noise
    channel of "Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect
    Verifiers" (arXiv 2510.00915).

    A correct answer (r = 1) becomes 0 with probability ``fn_rate`` (a false negative,
    rho_1 = P(r'=0 | r=1)); an incorrect one (r = 0) becomes 1 with probability ``fp_rate`` (a
    false positive, rho_0 = P(r'=1 | r=0)). Both default to ``rate`` (symmetric noise, as the
    flip-rate studies of noisy RLVR). This is the channel that ``backward_correction`` and
    ``forward_correction`` invert, with the same parameter names.

    Randomness: one uniform draw per row from a local ``torch.Generator`` seeded with
    ``seed + seed_offset`` (the step's seed), so a run is reproducible and the global RNG is not
    touched. Use different ``seed_offset`` values to make two noisy sources independent. NaN rows
    stay NaN; rewards other than 0/1 are a ``ConfigError``.
    """
    p_fp = _check_rate("fp_rate", rate if fp_rate is None else fp_rate, "flip_noise")
    p_fn = _check_rate("fn_rate", rate if fn_rate is None else fn_rate, "flip_noise")
    x = rewards.float()
    _check_binary(x, "flip_noise")
    gen = torch.Generator().manual_seed(int(seed) + int(seed_offset))
    u = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(x.device)
    flip = torch.where(x == 1, u < p_fn, u < p_fp)
    return torch.where(flip & _valid(x), 1.0 - x, x)


def _check_noise_rates(fp_rate: float, fn_rate: float, who: str) -> tuple[float, float]:
    rho0 = _check_rate("fp_rate", fp_rate, who)
    rho1 = _check_rate("fn_rate", fn_rate, who)
    if not rho0 + rho1 < 1.0:
        raise ConfigError(
            f"{_WHERE}: {who} needs fp_rate + fn_rate < 1 (a verifier better than chance), got "
            f"fp_rate={fp_rate!r}, fn_rate={fn_rate!r}"
        )
    return rho0, rho1


@REWARD_TRANSFORMS.register(
    "backward_correction",
    paper="Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers "
    "(backward correction)",
    arxiv="2510.00915",
    formula="r_hat = (r_noisy - rho0) / (1 - rho0 - rho1); rho0 = fp_rate, rho1 = fn_rate",
)
def backward_correction(
    rewards: torch.Tensor, *, fp_rate: float = 0.0, fn_rate: float = 0.0
) -> torch.Tensor:
    """Backward noise correction of a binary verifier reward (Cai et al., arXiv 2510.00915).

    The verifier is a noisy channel on the clean reward R* in {0, 1}: it reports 1 for a wrong
    answer with probability rho0 = ``fp_rate`` and 0 for a right one with probability
    rho1 = ``fn_rate``. Then E[R~ | R*] = rho0 + (1 - rho0 - rho1) R*, so

        R_hat = (R~ - rho0) / (1 - rho0 - rho1)

    has E[R_hat | R*] = R*: an unbiased surrogate of the clean reward, hence an unbiased
    policy-gradient estimate in expectation. It maps 0 -> -rho0/(1-rho0-rho1) and
    1 -> (1-rho0)/(1-rho0-rho1), so its variance is larger than the noisy reward's.

    Needs rho0 + rho1 < 1 (the paper assumes both in [0, 0.5)); rewards must be 0/1 (NaN kept).
    Confirmed: the formula, from a summary of the paper (sciencestack.ai's TL;DR, which writes
    R_hat = (R~ - rho0)/(1 - rho0 - rho1)) and the project digest (literature-1.md #64, marked
    as from a secondary source); the unbiasedness is re-derived above and tested. Not
    confirmed: the paper's own text (not opened here), e.g. how its GRPO hook combines R_hat with
    the group normalization, and how it estimates the rates (its "appeals" mechanism estimates
    rho1 online; here both rates are fixed hyperparameters).
    """
    rho0, rho1 = _check_noise_rates(fp_rate, fn_rate, "backward_correction")
    x = rewards.float()
    _check_binary(x, "backward_correction")
    return (x - rho0) / (1.0 - rho0 - rho1)


@REWARD_TRANSFORMS.register(
    "forward_correction",
    paper="Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers "
    "(forward correction)",
    arxiv="2510.00915",
    formula="w = rho1 if r_noisy = 1, rho1 - 1 if r_noisy = 0 (i.e. w = r_noisy - (1 - rho1)); "
    "E[w | R*] = (1 - rho0 - rho1)(R* - 1); rho1 = fn_rate",
)
def forward_correction(rewards: torch.Tensor, *, fn_rate: float = 0.0) -> torch.Tensor:
    """Forward noise correction (Cai et al., arXiv 2510.00915): the per-sample weight of the
    score-function term, w_1 = rho1 for an observed 1 and w_0 = rho1 - 1 for an observed 0.

    With rho0 = P(R~=1 | R*=0) and rho1 = P(R~=0 | R*=1) = ``fn_rate``:
    E[w | R*=1] = (1-rho1) rho1 + rho1 (rho1-1) = 0 and E[w | R*=0] = rho0 rho1 + (1-rho0)(rho1-1)
    = -(1 - rho0 - rho1), i.e. E[w | R*] = (1 - rho0 - rho1)(R* - 1). So the expected update
    E[w grad log pi] = (1 - rho0 - rho1) grad J_clean (the constant -1 drops out because
    E[grad log pi] = 0): aligned with the clean gradient, scaled by 1 - rho0 - rho1 > 0, and
    computed from rho1 alone, as the paper's abstract claims ("requires only the FN rate").

    IMPORTANT: as a reward, w = R~ - (1 - rho1) is the noisy reward shifted by a constant.
    Any advantage that subtracts a group or batch mean (``grpo``, ``dr_grpo``, ``rloo``,
    ``reinforce``, ...) removes that constant exactly, so this transform changes nothing there;
    it matters only for a no-baseline policy gradient, or combined with other sources. The paper
    reports the forward correction *outperforming* uncorrected GRPO, so its GRPO hook must apply
    w differently (e.g. to the score-function terms after the group normalization); that hook is
    not reproduced here.

    Confirmed: the weights w_0 = rho1 - 1, w_1 = rho1, from a summary of the paper
    (sciencestack.ai's TL;DR); the alignment property is re-derived above and tested. Not
    confirmed: the paper's text (not opened here), which weight belongs to which observed
    reward (the assignment above is the one for which the derivation holds; the other gives the
    wrong sign), and how it is combined with GRPO.
    """
    rho1 = _check_rate("fn_rate", fn_rate, "forward_correction")
    if not rho1 < 1.0:
        raise ConfigError(
            f"{_WHERE}.fn_rate: forward_correction needs fn_rate < 1, got {fn_rate!r}"
        )
    x = rewards.float()
    _check_binary(x, "forward_correction")
    return x - (1.0 - rho1)


# --------------------------------------------------------------------------- centred transforms


@REWARD_TRANSFORMS.register(
    "log_sigmoid",
    paper="Transforming and Combining Rewards for Aligning Large Language Models "
    "(LSC-transformation)",
    arxiv="2402.00742",
    formula="r' = log sigmoid(r - r_ref(x)) <= 0; r_ref = group mean / leave-one-out mean / "
    "group quantile / reference_rewards / 0",
)
def log_sigmoid(
    rewards: torch.Tensor,
    group: torch.Tensor,
    reference_rewards: torch.Tensor | None = None,
    *,
    reference: str = "group_mean",
    quantile: float = 0.85,
) -> torch.Tensor:
    """Log-sigmoid-centred reward (Wang et al., arXiv 2402.00742): u = log sigmoid(r - r_ref(x)).

    For a Bradley-Terry reward model, sigmoid(r(x, y) - r_ref(x)) is the probability that y is
    preferred to a reference response of reward r_ref(x), so u is the log-probability that y is
    "good" for prompt x. u <= 0 always (-> 0 as r grows: diminishing returns, so RL gains more
    from fixing poor outputs than from pushing good ones further, which the paper argues curbs
    reward hacking), and sums of u over properties are log-probabilities of being good on all
    of them (the ``and`` combiner).

    The paper's r_ref(x) is a per-prompt reference reward (e.g. a quantile of the rewards of
    reference-policy samples for x). ``reference`` picks it (see ``centring_reference``):
    ``group_mean`` (default), ``group_others`` (leave-one-out mean), ``group_quantile`` (the
    ``quantile`` of the group's rewards), ``reference_rewards`` (the batch field: one reference
    reward per row, or [B, M] rewards of M reference samples summarized by their ``quantile``),
    ``zero``. The group references use the *current* policy's samples, not the reference
    policy's: our approximation. ``quantile = 0.85`` follows the PAR authors' code for their
    log-sigmoid-centred baseline (which takes the 85th percentile of a normal fitted to the
    reference rewards); the value Wang et al. use was not confirmed.

    A row without a reference (its group has no other non-NaN reward under ``group_others``, or
    its ``reference_rewards`` are NaN) is centred on itself: u = log sigmoid(0) = -log 2. NaN
    rewards stay NaN. Computed with ``F.logsigmoid`` (stable for large |r - r_ref|).

    Confirmed: the formula and the sum-as-AND reading, from the paper's abstract and two
    summaries (themoonlight.io, chatpaper.com); the PAR repository's ``lsc`` shaping applies
    the same formula. Not confirmed from the paper text: how r_ref was chosen in its experiments.
    """
    x = rewards.float()
    ref = centring_reference(
        x, group, reference_rewards, reference=reference, quantile=quantile, who="log_sigmoid"
    )
    centred = torch.where(torch.isnan(ref), torch.zeros_like(x), x - ref)
    return torch.where(_valid(x), F.logsigmoid(centred), x)


@REWARD_TRANSFORMS.register(
    "par",
    paper="Reward Shaping to Mitigate Reward Hacking in RLHF (Preference As Reward)",
    arxiv="2502.18770",
    formula="r' = (1/M) sum_m sigmoid(r - r_ref_m) in (0, 1); references = the other rows of "
    "the group, or reference_rewards [B] / [B, M]",
)
def par(
    rewards: torch.Tensor,
    group: torch.Tensor,
    reference_rewards: torch.Tensor | None = None,
    *,
    reference: str = "group_others",
) -> torch.Tensor:
    """Preference As Reward (Fu et al., arXiv 2502.18770): r' = (1/M) sum_m sigmoid(r - r_ref_m).

    With a Bradley-Terry reward model, sigmoid(r - r_ref_m) is the modelled probability that the
    response beats reference response m, so r' is its mean preference (win rate) against M
    references: bounded in (0, 1), steep near the references and flat far from them, the two
    design principles the paper derives. The paper's references are M responses of the SFT
    (reference) policy to the same prompt; it reports one reference is enough.

    ``reference``:

    - ``group_others`` (default): the references are the other non-NaN rows of the same group
      (the completions sampled for the same prompt), so r' is each completion's mean modelled
      win probability against its siblings. They come from the current policy, not the SFT
      policy: our substitute when no reference responses are scored.
    - ``reference_rewards``: the batch field, [B] (M = 1) or [B, M] (NaN-padded), the rewards of
      reference responses for each row's prompt: the paper's setting.

    A row with no reference (a group of one, NaN references) gets sigmoid(0) = 1/2 (the PAR
    authors' code returns the raw reward there instead). NaN rewards stay NaN. In float32 the
    output is in [0, 1]: sigmoid rounds to exactly 1 (or underflows to 0) for |r - r_ref| > ~17
    (resp. ~100).

    Confirmed: the formula and the SFT-response references, from the authors' code
    (``PorUna-byte/PAR``, ``RewardShaper._shape_par``: ``sigmoid(reward - refs).mean()``, refs
    capped at ``reward_maxref``) and the paper's abstract (arXiv id 2502.18770). The
    group-sibling reference is this project's option, not the paper's.
    """
    if reference not in PAR_REFERENCES:
        raise ConfigError(
            f"{_WHERE}.reference: par has no reference {reference!r}; choose one of: "
            f"{', '.join(PAR_REFERENCES)}"
        )
    x = rewards.float()
    if reference == "group_others":
        refs = _others(x, group)
    else:
        refs = _given_reference(x, reference_rewards, "par")
    if refs.shape[1] == 0:
        wins = torch.full_like(x, float("nan"))
    else:
        wins = torch.nanmean(torch.sigmoid(x[:, None] - refs), dim=1)
    wins = torch.where(torch.isnan(wins), torch.full_like(x, 0.5), wins)
    return torch.where(_valid(x), wins, x)
