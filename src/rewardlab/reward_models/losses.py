"""The Bradley-Terry reward-model loss, with the optional margin and centering terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(
    chosen_reward: torch.Tensor,
    rejected_reward: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
    label_smoothing: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of a scalar reward model; shape of ``chosen_reward``.

    ``loss = -(1 - eps) log sigmoid(d) - eps log sigmoid(-d) + center_coef * (r_w + r_l)^2``
    with ``d = r_w - r_l - m``; ``eps = 0`` (the default) is ``-log sigmoid(d)``.

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

    * ``eps`` (``label_smoothing``, a float or one per pair) is the label smoothing of
      "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et al., arXiv
      2401.06080): the label says "w beats l" with probability ``1 - eps`` only, i.e. the
      cross-entropy against the soft target ``1 - eps``, so ambiguous pairs stop pushing once
      ``sigmoid(d) = 1 - eps`` (``d/dd loss = sigmoid(d) - (1 - eps)``). It is the same form as
      the ``label_smoothing`` of TRL's DPO sigmoid loss; TRL's ``RewardTrainer`` has none.

    With ``eps = 0`` the mean over pairs equals TRL's ``RewardTrainer`` loss on the same rewards.
    """
    diff = chosen_reward - rejected_reward
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    # logsigmoid is the stable form: log(sigmoid(x)) underflows for x << 0.
    loss = -F.logsigmoid(diff)
    smoothed = torch.is_tensor(label_smoothing) or label_smoothing != 0.0
    if smoothed:
        eps = torch.as_tensor(label_smoothing, dtype=diff.dtype, device=diff.device)
        loss = (1 - eps) * loss - eps * F.logsigmoid(-diff)
    if center_coef:
        loss = loss + center_coef * (chosen_reward + rejected_reward) ** 2
    return loss
