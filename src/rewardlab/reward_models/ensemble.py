"""Reward-model ensembles: K members scored together and aggregated into one reward.

An ensemble's members disagree most where the training pairs say least, so a conservative
aggregation (``min``, ``uwo``, ``mean_minus_std``) gives less reward where the reward model is
unsure, which is where a policy optimizing it would overoptimize ("Reward Model Ensembles Help
Mitigate Overoptimization", Coste et al., arXiv 2310.02743; "Helping or Herding? Reward Model
Ensembles Mitigate but do not Eliminate Reward Hacking", Eisenstein et al., arXiv 2312.09244).

Two layouts, one class (:class:`Ensemble`, a list of :class:`RewardModel`):

* independent members (``ensemble.mode`` ``seeds`` / ``bootstrap``): K full models; saved as
  ``member-00/`` ... (each a reward model folder) and ``ensemble.json``;
* shared backbone (``heads``): the members are K ``RewardModel`` objects holding the *same*
  backbone module and their own head. Members that share a backbone are scored with one
  backbone pass per batch. Saved as ``backbone/`` (a reward model folder: backbone, tokenizer,
  member 0's head), ``heads.safetensors`` (all K heads stacked) and ``ensemble.json``; writing
  the backbone K times would defeat the point of the layout.

``ENSEMBLE_AGGREGATIONS`` maps member rewards ``[K, B]`` to one reward per row ``[B]``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rewardlab.errors import RegistryError, RewardlabError
from rewardlab.registry import Registry
from rewardlab.reward_models.model import META_FILE, RewardModel

ENSEMBLE_FILE = "ensemble.json"
HEADS_FILE = "heads.safetensors"
BACKBONE_DIR = "backbone"

ENSEMBLE_AGGREGATIONS = Registry("ensemble_aggregation")


# --------------------------------------------------------------------------- aggregations


@ENSEMBLE_AGGREGATIONS.register(
    "mean", paper="Reward Model Ensembles Help Mitigate Overoptimization", arxiv="2310.02743",
    formula="r = 1/K sum_k r_k",
)
def mean(rewards: torch.Tensor) -> torch.Tensor:
    """Mean of the K member rewards (Coste et al., arXiv 2310.02743): ``r = 1/K sum_k r_k``."""
    return rewards.mean(0)


@ENSEMBLE_AGGREGATIONS.register(
    "median", paper="Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking",
    arxiv="2312.09244", formula="r = median_k r_k",
)
def median(rewards: torch.Tensor) -> torch.Tensor:
    """Median of the K member rewards (Eisenstein et al., arXiv 2312.09244):
    ``r = median_k r_k``; for even K the mean of the two middle values (``torch.median``
    would return the lower one, which would make the median pessimistic)."""
    return torch.quantile(rewards.double(), 0.5, dim=0).to(rewards.dtype)


@ENSEMBLE_AGGREGATIONS.register(
    "min", paper="Reward Model Ensembles Help Mitigate Overoptimization", arxiv="2310.02743",
    formula="r = min_k r_k  (worst-case optimization, WCO)",
)
def minimum(rewards: torch.Tensor) -> torch.Tensor:
    """Worst-case optimization (WCO; Coste et al., arXiv 2310.02743): ``r = min_k r_k``."""
    return rewards.min(0).values


@ENSEMBLE_AGGREGATIONS.register(
    "uwo", paper="Reward Model Ensembles Help Mitigate Overoptimization", arxiv="2310.02743",
    formula="r = mean_k r_k - coef * 1/K sum_k (r_k - mean)^2",
)
def uwo(rewards: torch.Tensor, *, coef: float = 1.0) -> torch.Tensor:
    """Uncertainty-weighted optimization (UWO; Coste et al., arXiv 2310.02743):
    ``r = mean_k r_k - coef * Var_k r_k`` with the intra-ensemble (population, 1/K) variance.
    The paper tunes ``coef`` (its lambda) per setting; 1.0 here is a neutral start, not the
    paper's value."""
    return rewards.mean(0) - coef * rewards.var(0, unbiased=False)


@ENSEMBLE_AGGREGATIONS.register(
    "mean_minus_std",
    paper="Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking",
    arxiv="2312.09244", formula="r = mean_k r_k - coef * std_k r_k",
)
def mean_minus_std(rewards: torch.Tensor, *, coef: float = 1.0) -> torch.Tensor:
    """Mean minus standard deviation (Eisenstein et al., arXiv 2312.09244):
    ``r = mean_k r_k - coef * std_k r_k`` (population std; the paper's form is coef = 1).
    Unlike ``uwo`` the penalty has the rewards' units, so it does not depend on their scale."""
    return rewards.mean(0) - coef * rewards.std(0, unbiased=False)


def aggregate(rewards: torch.Tensor, name: str = "mean", params: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Member rewards ``[K, B]`` -> ``[B]`` by the aggregation ``name``."""
    if rewards.dim() != 2:
        raise ValueError(f"member rewards must be [K, B], got shape {tuple(rewards.shape)}")
    return ENSEMBLE_AGGREGATIONS.call(name, {"rewards": rewards}, dict(params or {}))


def check_aggregation(name: str, params: Mapping[str, Any], where: str) -> None:
    """A RegistryError naming ``where`` (``ensemble.aggregation``, a reward's args) for an
    unknown aggregation, an unknown param or a param that is not a finite number >= 0."""
    try:
        ENSEMBLE_AGGREGATIONS.get(name)
    except RegistryError as err:
        raise RegistryError(f"{where}: {err}") from None
    ENSEMBLE_AGGREGATIONS.check_params(name, params, f"{where} params")
    for key, value in params.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0:
            raise RegistryError(f"{where} params: '{key}' must be a finite number >= 0, got {value!r}")


def preference_strength(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference strength of N pairs from K members' rewards ``[K, N]`` each ("Secrets of
    RLHF in Large Language Models Part II: Reward Modeling", Wang et al., arXiv 2401.06080):
    ``d_k = r_k(chosen) - r_k(rejected)``; returns ``(mean_k d_k, std_k d_k)`` (population std).
    A strongly negative mean marks a pair the ensemble contradicts (likely mislabelled)."""
    delta = chosen.double() - rejected.double()
    return delta.mean(0), delta.std(0, unbiased=False)


# --------------------------------------------------------------------------- the ensemble


class Ensemble:
    """K reward models scored together; ``score`` aggregates them (default: the aggregation
    the ensemble was saved with). Members that hold the same backbone object share its pass."""

    def __init__(
        self, members: Sequence[RewardModel], aggregation: str = "mean", params: Mapping[str, Any] | None = None
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.aggregation = aggregation
        self.params = dict(params or {})
        check_aggregation(aggregation, self.params, "ensemble.aggregation")
        for group in self._groups():
            lead = group[0]
            for m in group[1:]:
                # One backbone pass serves the group only if every member reads it the same way.
                if (m.pooling, m.max_length, m.tokenizer) != (lead.pooling, lead.max_length, lead.tokenizer):
                    raise ValueError("members sharing a backbone must share pooling, max_length and tokenizer")

    def __len__(self) -> int:
        return len(self.members)

    @property
    def tokenizer(self) -> Any:
        return self.members[0].tokenizer

    @property
    def shares_backbone(self) -> bool:
        return len(self._groups()) == 1 and len(self.members) > 1

    def _groups(self) -> list[list[RewardModel]]:
        """Members grouped by backbone object, in member order within each group."""
        groups: dict[int, list[RewardModel]] = {}
        for m in self.members:
            groups.setdefault(id(m.backbone), []).append(m)
        return list(groups.values())

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def member_rewards(
        self, prompts: Sequence[str], completions: Sequence[str] | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Every member's reward of every text, ``[K, B]`` float32, in eval mode, no grad."""
        rows: dict[int, list[torch.Tensor]] = {id(m): [] for m in self.members}
        for group in self._groups():
            states = [m.training for m in group]
            for m in group:
                m.eval()
            try:
                for lo in range(0, len(prompts), batch_size):
                    part = completions[lo : lo + batch_size] if completions is not None else None
                    batch = group[0].encode(prompts[lo : lo + batch_size], part)
                    pooled = group[0].features(**batch)
                    for m in group:
                        rows[id(m)].append(m.head(pooled.to(m.head.weight.dtype)).squeeze(-1).float())
            finally:
                for m, state in zip(group, states, strict=True):
                    m.train(state)
        if not len(prompts):
            return torch.zeros(len(self.members), 0)
        return torch.stack([torch.cat(rows[id(m)]) for m in self.members])

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str] | None = None,
        batch_size: int = 64,
        *,
        aggregation: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[float]:
        """One aggregated reward per text (the same call as :meth:`RewardModel.score`)."""
        name = aggregation or self.aggregation
        chosen = self.params if aggregation is None and params is None else dict(params or {})
        return aggregate(self.member_rewards(prompts, completions, batch_size), name, chosen).tolist()

    def disagreement(
        self, prompts: Sequence[str], completions: Sequence[str] | None = None, batch_size: int = 64
    ) -> list[float]:
        """Std of the members' rewards per text (population std): the ensemble's uncertainty."""
        return self.member_rewards(prompts, completions, batch_size).std(0, unbiased=False).tolist()

    # ------------------------------------------------------------------ saving

    def save(self, folder: str | Path) -> Path:
        """Write the ensemble into ``folder`` atomically (temporary folder renamed into place)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        layout = "heads" if self.shares_backbone else "members"
        if layout == "heads":
            self.members[0].save(tmp / BACKBONE_DIR)
            heads = {
                "weight": torch.cat([m.head.weight.detach().float() for m in self.members]).contiguous(),
                "bias": torch.cat([m.head.bias.detach().float() for m in self.members]).contiguous(),
            }
            save_file(heads, str(tmp / HEADS_FILE))
        else:
            for k, m in enumerate(self.members):
                m.save(tmp / member_dir(k))
        meta = {
            "format": 1, "layout": layout, "members": len(self.members),
            "aggregation": self.aggregation, "params": self.params,
        }
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32) -> Ensemble:
        """An ensemble written by :meth:`save`."""
        folder = Path(folder)
        meta_path = folder / ENSEMBLE_FILE
        if not meta_path.is_file():
            raise RewardlabError(f"{folder}: not a reward-model ensemble folder (no {ENSEMBLE_FILE})")
        meta = json.loads(meta_path.read_text())
        k = int(meta["members"])
        if meta["layout"] == "heads":
            lead = RewardModel.load(folder / BACKBONE_DIR, dtype=dtype)
            heads = load_file(str(folder / HEADS_FILE))
            members = [lead] + [
                RewardModel(lead.backbone, lead.tokenizer, lead.pooling, lead.max_length) for _ in range(k - 1)
            ]
            for i, m in enumerate(members):
                m.head.load_state_dict({"weight": heads["weight"][i : i + 1], "bias": heads["bias"][i : i + 1]})
        else:
            members = [RewardModel.load(folder / member_dir(i), dtype=dtype) for i in range(k)]
        return cls(members, meta.get("aggregation", "mean"), meta.get("params") or {})


def member_dir(k: int) -> str:
    return f"member-{k:02d}"


def is_ensemble_folder(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def scorer_folder(path: str | Path) -> Path | None:
    """The model folder behind ``path``: a reward model or ensemble folder, or an ``rm train``
    run folder (its ``final/``); None when ``path`` is none of these."""
    from rewardlab.trainers.common import FINAL_MODEL

    path = Path(path).expanduser()
    for folder in (path, path / FINAL_MODEL):
        if (folder / META_FILE).is_file() or is_ensemble_folder(folder):
            return folder
    return None


def load_scorer(path: str | Path) -> RewardModel | Ensemble:
    """A saved reward model or ensemble (or an ``rm train`` run's final model)."""
    folder = scorer_folder(path)
    if folder is None:
        raise RewardlabError(
            f"{path}: not a reward model or ensemble folder (no {META_FILE} or {ENSEMBLE_FILE}, "
            "here or in final/); pass a folder written by `rewardlab rm train`"
        )
    return Ensemble.load(folder) if is_ensemble_folder(folder) else RewardModel.load(folder)


def evaluate_members(
    ensemble: Ensemble, pairs: Sequence[Any], *, batch_size: int = 64, bins: int = 10, buckets: int = 4
) -> Any:
    """The ensemble's :class:`RewardEval` on ``pairs`` (its aggregation's metrics, buckets),
    plus ``eval/member{k}/accuracy`` and ``eval/member{k}/reward_gap`` per member,
    ``eval/member_accuracy_mean`` and ``eval/disagreement`` (mean std across members of the
    pairs' rewards). Members are scored once; every metric comes from those rewards."""
    from rewardlab.reward_models.data import margins_of
    from rewardlab.reward_models.evaluate import correct, pairwise_metrics

    prompts = [p.prompt for p in pairs]
    chosen = ensemble.member_rewards(prompts, [p.chosen for p in pairs], batch_size)
    rejected = ensemble.member_rewards(prompts, [p.rejected for p in pairs], batch_size)
    margins = margins_of(list(pairs))
    found = pairwise_metrics(
        aggregate(chosen, ensemble.aggregation, ensemble.params),
        aggregate(rejected, ensemble.aggregation, ensemble.params),
        torch.tensor(margins) if margins is not None else None, bins=bins, buckets=buckets,
    )
    accuracies = []
    for k in range(len(ensemble)):
        gap = chosen[k].double() - rejected[k].double()
        accuracies.append(float(correct(gap).mean()))
        found.metrics[f"eval/member{k}/accuracy"] = accuracies[-1]
        found.metrics[f"eval/member{k}/reward_gap"] = float(gap.mean())
    found.metrics["eval/member_accuracy_mean"] = sum(accuracies) / len(accuracies)
    spread = torch.cat([chosen, rejected], dim=1).std(0, unbiased=False)
    found.metrics["eval/disagreement"] = float(spread.mean())
    return found
