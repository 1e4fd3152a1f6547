"""Reward-model ensembles: the aggregations (hand values, never above the mean), the
preference strength, training K members (seeds; heads on one frozen backbone) on pairs whose
preference is known (digits beat letters), member disagreement in vs out of distribution,
save/load, the ``reward_model`` reward source (equal to the model's own score, in a short RL
run) and its error messages."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from test_reward_model import rm_config
from test_trainers import _rl_config, _train_metrics

from rewardlab.config import RewardSpec
from rewardlab.errors import ConfigError, RegistryError
from rewardlab.reward_models.data import read_pairs
from rewardlab.reward_models.ensemble import (
    ENSEMBLE_AGGREGATIONS,
    Ensemble,
    aggregate,
    load_scorer,
    preference_strength,
)
from rewardlab.reward_models.evaluate import evaluate_pairs, evaluate_saved
from rewardlab.reward_models.model import RewardModel, load_reward_model
from rewardlab.reward_models.trainer import train_reward_model
from rewardlab.rewards import build_reward_sources, score_completions
from rewardlab.trainers.online import train

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


# --------------------------------------------------------------------------- aggregations


def test_aggregations_hand_computed() -> None:
    # K = 3 members, B = 2 rows. Column 0: 1, 2, 6 (mean 3, var 14/3); column 1: 4, 0, 2 (mean 2, var 8/3).
    r = torch.tensor([[1.0, 4.0], [2.0, 0.0], [6.0, 2.0]])
    assert aggregate(r, "mean").tolist() == pytest.approx([3.0, 2.0])
    assert aggregate(r, "median").tolist() == pytest.approx([2.0, 2.0])
    assert aggregate(r, "min").tolist() == pytest.approx([1.0, 0.0])
    assert aggregate(r, "uwo", {"coef": 0.5}).tolist() == pytest.approx([3 - 7 / 3, 2 - 4 / 3])
    assert aggregate(r, "uwo").tolist() == pytest.approx([3 - 14 / 3, 2 - 8 / 3])  # coef 1
    assert aggregate(r, "mean_minus_std").tolist() == pytest.approx([3 - math.sqrt(14 / 3), 2 - math.sqrt(8 / 3)])
    # an even K's median is the mean of the two middle values, not the lower one
    assert aggregate(torch.tensor([[1.0], [3.0], [10.0], [0.0]]), "median").tolist() == pytest.approx([2.0])
    for entry in ENSEMBLE_AGGREGATIONS:
        assert entry.arxiv in ("2310.02743", "2312.09244") and entry.formula
    assert ENSEMBLE_AGGREGATIONS.get("uwo").params == {"coef": 1.0}
    with pytest.raises(RegistryError, match=r"unknown ensemble_aggregation 'mea' \(did you mean 'mean'\?\)"):
        aggregate(r, "mea")


def test_conservative_aggregations_are_never_above_the_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        k, b = int(torch.randint(1, 7, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen))
        r = torch.randn(k, b, generator=gen) * float(torch.rand(1, generator=gen) * 10)
        mean = aggregate(r, "mean")
        coef = float(torch.rand(1, generator=gen) * 3)
        for name, params in (("min", {}), ("uwo", {"coef": coef}), ("mean_minus_std", {"coef": coef})):
            assert (aggregate(r, name, params) <= mean + 1e-6).all(), (name, r)
        med = aggregate(r, "median")
        assert (med >= r.min(0).values - 1e-6).all() and (med <= r.max(0).values + 1e-6).all()


def test_preference_strength_is_mean_and_std_of_reward_differences() -> None:
    chosen = torch.tensor([[2.0, 0.0], [3.0, 1.0]])  # K = 2 members, N = 2 pairs
    rejected = torch.tensor([[1.0, 2.0], [0.0, 2.0]])
    mean, std = preference_strength(chosen, rejected)  # deltas: pair 0: 1, 3; pair 1: -2, -1
    assert mean.tolist() == pytest.approx([2.0, -1.5])
    assert std.tolist() == pytest.approx([1.0, 0.5])


# --------------------------------------------------------------------------- training


def _ood_texts(n: int = 48) -> tuple[list[str], list[str]]:
    """Texts unlike any training completion: capitals, punctuation and spaces, 3-12 long."""
    rng = random.Random(3)
    completions = ["".join(rng.choice("ABCDEFGHIJ!?#%&XYZ ") for _ in range(rng.randint(3, 12))) for _ in range(n)]
    return [f"z{i}?" for i in range(n)], completions


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    config = rm_config(
        tmp_path_factory.mktemp("ens"), **{"loss.use_margin": False, "ensemble.members": 3, "ensemble.mode": "seeds"}
    )
    return config, train_reward_model(config)


def test_seed_members_learn_and_disagree_more_out_of_distribution(seeds_run: tuple[Any, Any]) -> None:
    config, result = seeds_run
    last = result.last_eval
    assert last["eval/accuracy"] >= 0.9
    assert all(last[f"eval/member{k}/accuracy"] >= 0.9 for k in range(3))
    assert "eval/member2/accuracy" in result.first_eval and "eval/member3/accuracy" not in last
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == result.steps + 2 and result.steps == 3 * 12  # K members x 12 steps, 2 evaluations
    assert "member2/loss" in json.loads(lines[-2])

    ensemble = load_scorer(result.run_dir)
    assert isinstance(ensemble, Ensemble) and len(ensemble) == 3 and not ensemble.shares_backbone
    rows = [json.loads(line) for line in Path(config.data.eval_path).read_text().splitlines()]
    prompts = [r["prompt"] for r in rows] * 2
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    inside = sum(ensemble.disagreement(prompts, completions)) / len(completions)
    ood = _ood_texts()
    outside = sum(ensemble.disagreement(*ood)) / len(ood[0])
    assert outside > 3 * inside, (inside, outside)  # measured: 0.06 vs 1.4 (K = 4)


def test_ensemble_save_load_round_trip(seeds_run: tuple[Any, Any], tmp_path: Path) -> None:
    config, result = seeds_run
    loaded = Ensemble.load(result.run_dir / "final")
    prompts, completions = ["q1:", "q2:", "a longer prompt:"], ["12345", "abcde", "x!"]
    member = RewardModel.load(result.run_dir / "final" / "member-01")
    assert loaded.member_rewards(prompts, completions)[1].tolist() == member.score(prompts, completions)
    # saving again and loading gives the same rewards; evaluation equals the logged one
    again = Ensemble.load(loaded.save(tmp_path / "copy"))
    assert torch.equal(again.member_rewards(prompts, completions), loaded.member_rewards(prompts, completions))
    pairs = read_pairs(config.data.eval_path, loaded.tokenizer).pairs
    assert evaluate_pairs(loaded, pairs).metrics == pytest.approx(result.last_eval)
    assert evaluate_saved(result.run_dir).metrics == pytest.approx(result.last_eval)  # `rm eval`
    assert loaded.score(prompts, completions, aggregation="min") == pytest.approx(
        loaded.member_rewards(prompts, completions).min(0).values.tolist()
    )


def test_heads_share_one_frozen_backbone(tmp_path: Path) -> None:
    config = rm_config(
        tmp_path, **{"loss.use_margin": False, "ensemble.members": 3, "ensemble.mode": "heads",
                     "ensemble.aggregation": "uwo", "ensemble.params": {"coef": 0.5}, "train.optim.lr": 1e-2}
    )
    result = train_reward_model(config)
    assert result.last_eval["eval/accuracy"] >= 0.8  # a linear probe of a random tiny backbone
    final = result.run_dir / "final"
    assert (final / "heads.safetensors").is_file() and not (final / "member-00").exists()
    loaded = Ensemble.load(final)
    assert loaded.shares_backbone and (loaded.aggregation, loaded.params) == ("uwo", {"coef": 0.5})
    heads = torch.cat([m.head.weight for m in loaded.members])
    assert not torch.allclose(heads[0], heads[1])  # bootstraps and starts differ
    fresh = load_reward_model(config.model, seed=config.seed)  # the backbone never trained
    for a, b in zip(fresh.backbone.parameters(), loaded.members[0].backbone.parameters(), strict=True):
        assert torch.equal(a, b)
    # one shared backbone pass gives what each member alone gives
    prompts, completions = ["q1:", "q2:"], ["12345", "abcde"]
    alone = torch.tensor([m.score(prompts, completions) for m in loaded.members])
    assert torch.allclose(loaded.member_rewards(prompts, completions), alone, atol=1e-6)


def test_bad_ensemble_config_is_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ensemble.members"):
        rm_config(tmp_path, **{"ensemble.members": 0})
    config = rm_config(tmp_path, **{"ensemble.members": 2, "ensemble.aggregation": "worst"})
    with pytest.raises(ConfigError, match=r"ensemble.aggregation: unknown ensemble_aggregation 'worst'"):
        train_reward_model(config)


# --------------------------------------------------------------------------- the reward source


def test_reward_model_source_equals_the_ensembles_own_score(seeds_run: tuple[Any, Any]) -> None:
    _config, result = seeds_run
    path = str(result.run_dir / "final")
    specs = [RewardSpec(name="reward_model", args={"path": path}),
             RewardSpec(name="reward_model", args={"path": path, "aggregation": "uwo", "params": {"coef": 0.5}}),
             RewardSpec(name="reward_model", args={"path": path + "/member-00"})]
    sources = build_reward_sources(specs, task=None)
    prompts, completions = ["q1:", "q2:", "z?"], ["12345", "abcde", "ABC!"]
    scores = score_completions(sources, prompts, completions, {})
    ensemble = Ensemble.load(path)
    assert scores["reward_model"].tolist() == pytest.approx(ensemble.score(prompts, completions))
    assert scores["reward_model_2"].tolist() == pytest.approx(
        ensemble.score(prompts, completions, aggregation="uwo", params={"coef": 0.5})
    )
    member = RewardModel.load(path + "/member-00")
    assert scores["reward_model_3"].tolist() == pytest.approx(member.score(prompts, completions))
    assert sources[0].fn.last_disagreement == pytest.approx(ensemble.disagreement(prompts, completions))


def test_reward_model_source_in_a_short_rl_run(seeds_run: tuple[Any, Any], tmp_path: Path) -> None:
    _config, result = seeds_run
    config = _rl_config(
        tmp_path / "rl",
        **{"train.steps": 2, "eval.pass_k": 1, "logging.samples": 0,
           "rewards": [{"name": "reward_model", "args": {"path": str(result.run_dir), "aggregation": "min"}}]},
    )
    run = train(config)
    steps = [r for r in _train_metrics(run.run_dir) if "reward" in r]
    assert len(steps) == 2 and all(math.isfinite(r["reward"]) for r in steps)
    # the ensemble's disagreement on each step's completions is logged with the reward
    assert all(r["reward/reward_model/disagreement"] > 0 for r in steps)


def test_reward_model_source_errors_name_the_arg(tmp_path: Path, seeds_run: tuple[Any, Any]) -> None:
    def build(args: dict[str, Any]) -> None:
        build_reward_sources([RewardSpec(name="reward_model", args=args)], task=None)

    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args: reward 'reward_model': arg 'path': '.*nowhere' does not exist"):
        build({"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"arg 'path': .* is not a reward model or ensemble folder"):
        build({"path": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args\.pth: reward 'reward_model' has no arg 'pth' \(did you mean 'path'\?\)"):
        build({"pth": "x"})
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args\.path: reward 'reward_model' needs arg 'path'"):
        build({})
    path = str(seeds_run[1].run_dir / "final")
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args: reward 'reward_model': arg 'aggregation': unknown ensemble_aggregation 'mn'"):
        build({"path": path, "aggregation": "mn"})
    with pytest.raises(ConfigError, match=r"'uwo' has no parameter 'lam'"):
        build({"path": path, "aggregation": "uwo", "params": {"lam": 1.0}})
    with pytest.raises(ConfigError, match=r"arg 'batch_size' must be an integer >= 1"):
        build({"path": path, "batch_size": 0})
