"""The built-in reward ``reward_model``: a trained reward model or ensemble as a reward source.

Registered in ``REWARD_FACTORIES`` when this module is imported (``rewardlab.rewards`` imports
it), so any run can name it::

    rewards:
      - name: reward_model
        args: {path: runs/rm-ensemble/final, aggregation: uwo, params: {coef: 0.5}}

The folder is checked when the run's rewards are built (a config mistake is reported before
any model loads); the model itself loads on the first call, once, and scores with no grad.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rewardlab.errors import ConfigError, RegistryError
from rewardlab.rewards.builtin import REWARD_FACTORIES, RewardFn

NAME = "reward_model"


class RewardModelReward:
    """``fn(prompts, completions, **columns)`` -> one reward per completion from a saved
    reward model (its own score) or ensemble (its members' rewards, aggregated).

    ``last_disagreement`` holds the ensemble's per-row std across members from the latest
    call (None for a single model); ``drain_metrics`` gives the mean over every row scored
    since it was last called (the trainers log it as ``reward/<name>/disagreement``)."""

    def __init__(self, folder: Path, aggregation: str | None, params: Mapping[str, Any], batch_size: int) -> None:
        self.folder = folder
        self.aggregation = aggregation
        self.params = dict(params)
        self.batch_size = batch_size
        self.last_disagreement: list[float] | None = None
        self._disagreement_sum = 0.0
        self._disagreement_rows = 0
        self._scorer: Any = None

    def drain_metrics(self) -> dict[str, float]:
        """The ensemble's mean disagreement (std across members) over the rows scored since
        the last call; nothing for a single model or when nothing was scored."""
        if not self._disagreement_rows:
            return {}
        mean = self._disagreement_sum / self._disagreement_rows
        self._disagreement_sum, self._disagreement_rows = 0.0, 0
        return {"disagreement": mean}

    def scorer(self) -> Any:
        """The loaded model or ensemble (loaded on first use, then kept)."""
        if self._scorer is None:
            from rewardlab.reward_models.ensemble import load_scorer

            self._scorer = load_scorer(self.folder)
        return self._scorer

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        from rewardlab.reward_models.ensemble import Ensemble, aggregate

        scorer = self.scorer()
        if not isinstance(scorer, Ensemble):
            return scorer.score(prompts, completions, self.batch_size)
        rewards = scorer.member_rewards(prompts, completions, self.batch_size)
        self.last_disagreement = rewards.std(0, unbiased=False).tolist()
        self._disagreement_sum += sum(self.last_disagreement)
        self._disagreement_rows += len(self.last_disagreement)
        name = self.aggregation or scorer.aggregation
        params = self.params if self.aggregation or self.params else scorer.params
        return aggregate(rewards, name, params).tolist()


def reward_model(
    path: str,
    aggregation: str | None = None,
    params: dict[str, Any] | None = None,
    batch_size: int = 64,
) -> RewardFn:
    """A trained reward model's score r(prompt, completion): ``path`` is a folder written by
    ``rewardlab rm train`` (a model or ensemble folder, or the run folder). For an ensemble,
    ``aggregation`` (an ``ensemble_aggregation``: mean, median, min, uwo, mean_minus_std;
    default: the one the ensemble was trained with, ``mean`` unless set) combines its members,
    with ``params`` (e.g. ``{coef: 0.5}``); a single model ignores both. ``batch_size``: texts
    per forward pass."""
    from rewardlab.reward_models.ensemble import ENSEMBLE_FILE, check_aggregation, scorer_folder
    from rewardlab.reward_models.model import META_FILE

    if not isinstance(path, str) or not path:
        raise ConfigError(f"reward '{NAME}': arg 'path' must be a non-empty string, got {path!r}")
    folder = scorer_folder(path)
    if folder is None:
        problem = "does not exist" if not Path(path).expanduser().exists() else (
            f"is not a reward model or ensemble folder (no {META_FILE} or {ENSEMBLE_FILE}, here or in final/)"
        )
        raise ConfigError(
            f"reward '{NAME}': arg 'path': '{path}' {problem}; pass a folder written by `rewardlab rm train`"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"reward '{NAME}': arg 'batch_size' must be an integer >= 1, got {batch_size!r}")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"reward '{NAME}': arg 'params' must be a mapping such as {{coef: 0.5}}, got {params!r}")
    if aggregation is not None and (not isinstance(aggregation, str) or not aggregation):
        raise ConfigError(f"reward '{NAME}': arg 'aggregation' must be a non-empty string, got {aggregation!r}")
    saved = _saved_aggregation(folder / ENSEMBLE_FILE)
    if aggregation is not None or params:
        try:
            check_aggregation(aggregation or saved, params or {}, f"reward '{NAME}': arg 'aggregation'")
        except RegistryError as err:
            raise ConfigError(str(err)) from None
    return RewardModelReward(folder, aggregation, params or {}, batch_size)


def _saved_aggregation(meta_path: Path) -> str:
    """The aggregation an ensemble folder was saved with (``mean`` for a single model)."""
    import json

    if not meta_path.is_file():
        return "mean"
    return str(json.loads(meta_path.read_text()).get("aggregation", "mean"))


REWARD_FACTORIES[NAME] = reward_model
