"""The Bradley-Terry reward-model loss, with the optional margin and centering terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(
    chosen_reward: torch.Tensor,
    rejected_reward: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of a scalar reward model; shape of ``chosen_reward``.

    ``loss = -log sigmoid(r_w - r_l - m) + center_coef * (r_w + r_l)^2``

    * The first term is the negative log-likelihood of the preference under the Bradley-Terry
      model ``P(w beats l) = sigmoid(r_w - r_l)``, the reward-model loss of "Training language
      models to follow instructions with human feedback" (Ouyang et al., arXiv 2203.02155).
    * ``m`` (``margin``, per pair; None = 0) is the margin term of "Llama 2: Open Foundation
      and Fine-Tuned Chat Models" (Touvron et al., arXiv 2307.09288): pairs labelled as
      clearly different must be separated by at least ``m`` before the loss flattens out.
    * The centering term is the auxiliary loss of "Helping or Herding? Reward Model Ensembles
      Mitigate but do not Eliminate Reward Hacking" (Eisenstein et al., arXiv 2312.09244): the
      BT likelihood only sees reward differences, so it leaves the rewards' offset free; the
      penalty pins the pair's mean reward near 0 (TRL's ``center_rewards_coefficient``).

    The mean over pairs equals TRL's ``RewardTrainer`` loss on the same rewards.
    """
    diff = chosen_reward - rejected_reward
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    # logsigmoid is the stable form: log(sigmoid(x)) underflows for x << 0.
    loss = -F.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (chosen_reward + rejected_reward) ** 2
    return loss
