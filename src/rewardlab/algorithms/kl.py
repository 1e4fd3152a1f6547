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
