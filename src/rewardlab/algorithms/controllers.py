"""Coefficient controllers: plain functions that map (coefficient, observation) -> coefficient.

They are not registry axes: the trainer keeps the current coefficient, calls one of these once
per step with the step's observation, and uses the result for the next step's loss.
"""

from __future__ import annotations

from rewardlab.errors import ConfigError

KL_ERROR_CLIP = 0.2


def adaptive_kl_coef(
    coef: float, observed_kl: float, *, target: float, horizon: int, n_steps: int
) -> float:
    """The adaptive KL controller of "Fine-Tuning Language Models from Human Preferences"
    (Ziegler et al., arXiv 1909.08593, section 2.2).

        e_t = clip(KL_t / target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    A KL above ``target`` raises the coefficient, below it lowers it; the clipped error bounds
    the change of one update to a factor in [1 - 0.2 K_beta, 1 + 0.2 K_beta].

    Confirmed from implementations that cite the paper and follow OpenAI's
    ``lm-human-preferences`` code (verl's and LightRFT's ``AdaptiveKLController``; torchrl's
    documents the same): proportional_error = clip(current / target - 1, -0.2, 0.2),
    mult = 1 + proportional_error * n_steps / horizon, value *= mult. ``n_steps`` and
    ``horizon`` are in the same unit; TRL and verl pass the number of samples of the batch as
    ``n_steps`` (so ``horizon`` counts samples). Not confirmed from the paper text (it could
    not be opened here): its notation K_beta and the value it reports (recalled as 0.1).
    """
    if not target > 0:
        raise ConfigError(f"adaptive_kl_coef: target KL must be > 0, got {target!r}")
    if not horizon > 0:
        raise ConfigError(f"adaptive_kl_coef: horizon must be > 0, got {horizon!r}")
    if n_steps < 0:
        raise ConfigError(f"adaptive_kl_coef: n_steps must be >= 0, got {n_steps!r}")
    error = min(max(observed_kl / target - 1.0, -KL_ERROR_CLIP), KL_ERROR_CLIP)
    return coef * (1.0 + error * n_steps / horizon)


def adaptive_entropy_coef(
    coef: float, entropy: float, *, target: float, delta: float, max_coef: float | None
) -> float:
    """Adaptive entropy control of Skywork Open Reasoner 1 (He et al., arXiv 2505.22312,
    section 3.2.5, "adaptive entropy control").

        c_{k+1} = clip(c_k + delta, 0, max_coef)   if entropy_k < target
        c_{k+1} = clip(c_k - delta, 0, max_coef)   otherwise

    ``entropy`` is the step's mean token entropy of the policy, ``target`` the target entropy
    (the paper's tgt-ent), ``delta`` the step of the coefficient; ``max_coef=None`` leaves it
    unbounded above. The entropy bonus is applied only while the entropy is below the target
    (see ``entropy_bonus_active``): the loss uses c_{k+1} * 1[entropy_k < target].

    Confirmed from the authors' code as copied, with attribution to
    ``SkyworkAI/Skywork-OR1/verl/trainer/ppo/core_algos.py``, into another public repository
    (``EntController.update``): +delta below the target, -delta otherwise (an entropy exactly
    at the target decreases the coefficient), clip to [min_ent_coef, max_ent_coef], and
    ``entropy_loss_enabled = current_ent < target_ent``. The released Skywork-OR1 scripts use
    target 0.2, delta 1e-4, coefficient bounds [0, 0.005], initial coefficient 0 (the
    ``7b_8k`` / ``32b_16k`` scripts; an older 7B script uses delta 1e-3 and max 0.5). The
    lower bound is fixed at 0 here. Not confirmed from the report's text (it could not be
    opened here): its notation and the values of its ablations.
    """
    if delta < 0:
        raise ConfigError(f"adaptive_entropy_coef: delta must be >= 0, got {delta!r}")
    if max_coef is not None and max_coef < 0:
        raise ConfigError(f"adaptive_entropy_coef: max_coef must be >= 0, got {max_coef!r}")
    updated = coef + delta if entropy < target else coef - delta
    updated = max(updated, 0.0)
    return updated if max_coef is None else min(updated, max_coef)


def entropy_bonus_active(entropy: float, target: float) -> bool:
    """Whether Skywork-OR1's entropy bonus applies this step: only while the entropy is below
    the target (``entropy_loss_enabled = current_ent < target_ent`` in the authors' code)."""
    return entropy < target
