"""Per-token estimators of KL(pi || pi_ref) from samples of pi.

From J. Schulman, "Approximating KL Divergence" (2020, blog note, no arXiv id), with
log r = ref_logp - logp evaluated on tokens sampled from pi.
"""

from __future__ import annotations

import torch

from rewardlab.registry import Registry

KL_ESTIMATORS = Registry("kl")

_PAPER = "Approximating KL Divergence (J. Schulman, 2020 blog note)"


@KL_ESTIMATORS.register("k1", paper=_PAPER, formula="k1 = logp - ref_logp")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The naive estimator k1 = -log r = logp - ref_logp: unbiased, high variance, can be < 0."""
    return logp - ref_logp


@KL_ESTIMATORS.register(
    "k3", paper=_PAPER, formula="k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1"
)
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r: unbiased, always >= 0, low variance; GRPO's KL term (DeepSeekMath
    arXiv 2402.03300, eq. 4)."""
    log_ratio = ref_logp - logp
    # expm1(x) - x == exp(x) - x - 1, without the cancellation that makes the naive form
    # negative and wrong by orders of magnitude in float32 for |x| < 1e-2 (where KL ~ x^2 / 2).
    return torch.expm1(log_ratio) - log_ratio


@KL_ESTIMATORS.register("k2", paper=_PAPER, formula="k2 = 0.5 * (logp - ref_logp)^2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2: always >= 0 and low variance, but biased. Its expectation is the
    f-divergence with f(x) = (log x)^2 / 2, which matches KL(pi || pi_ref) to second order when
    the two policies are close (Schulman's note); verl calls it "mse"."""
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register(
    "abs",
    paper="verl kl_penalty 'abs' (no paper); cf. Approximating KL Divergence (J. Schulman, 2020)",
    formula="abs = abs(logp - ref_logp)",
)
def abs_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """|log r| = |logp - ref_logp|: the magnitude of k1, always >= 0. Not an unbiased KL
    estimator: E[|log r|] >= |E[log r]| = KL, so it over-estimates. It is not in Schulman's
    note; it is the "abs" KL penalty of verl, registered here under that name."""
    return (logp - ref_logp).abs()
