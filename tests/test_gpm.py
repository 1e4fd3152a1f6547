"""The general preference model (arXiv 2410.02197): the skew-symmetric score (antisymmetry,
s(y, y) = 0, hand values), the loss by hand, the rock-paper-scissors cycle that a GPM fits and a
Bradley-Terry reward model cannot, save/load, and a saved GPM as a judge (built by name through
``build_preference_fn`` and used in a short online SPPO run)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardlab.config import JudgeConfig, parse_config
from rewardlab.errors import ConfigError, RewardlabError
from rewardlab.reward_models.config import RewardBackboneConfig, RewardModelConfig
from rewardlab.reward_models.data import RewardPair
from rewardlab.reward_models.gpm import (
    GeneralPreferenceModel,
    GPMHeadConfig,
    cached_gpm,
    gpm_loss,
    load_gpm,
    preference_score,
    skew_operator,
)
from rewardlab.reward_models.gpm_trainer import GPMConfig, evaluate_gpm, train_gpm
from rewardlab.reward_models.model import RewardModel
from rewardlab.reward_models.trainer import train_reward_model
from rewardlab.rewards.preference_fn import build_preference_fn

JUDGE = "rewardlab.reward_models.gpm:judge"
# chosen beats rejected: rock > scissors > paper > rock.
CYCLE = [("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")]


# --------------------------------------------------------------------------- the score


def test_score_is_antisymmetric_and_zero_on_self() -> None:
    torch.manual_seed(0)
    v1, v2 = torch.randn(5, 6), torch.randn(5, 6)
    scales = torch.rand(3) + 0.5
    for w in (None, scales):
        assert torch.equal(preference_score(v1, v2, w), -preference_score(v2, v1, w))
        assert torch.equal(preference_score(v1, v1, w), torch.zeros(5))
        # The same number as the matrix form <R v1, v2>, and R is skew-symmetric.
        R = skew_operator(6, w)
        assert torch.equal(R.T, -R)
        assert torch.allclose(preference_score(v1, v2, w), ((v1 @ R.T) * v2).sum(-1), atol=1e-6)


def test_score_by_hand_in_two_dimensions() -> None:
    # R = [[0, -1], [1, 0]]: R (x, y) = (-y, x); <R v1, v2> = x1 y2 - y1 x2.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(preference_score(e1, e2)) == 1.0  # R e1 = e2
    assert float(preference_score(e2, e1)) == -1.0
    v1, v2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert float(preference_score(v1, v2)) == 1 * 4 - 2 * 3
    assert float(preference_score(v1, v2, torch.tensor([3.0]))) == 3 * (1 * 4 - 2 * 3)
    # Three unit vectors 120 degrees apart: a perfect cycle, s = sin(120 deg) on every edge.
    a, b, c = (torch.tensor([math.cos(t), math.sin(t)]) for t in (0.0, 2 * math.pi / 3, 4 * math.pi / 3))
    for x, y in ((a, b), (b, c), (c, a)):
        assert float(preference_score(x, y)) == pytest.approx(math.sin(2 * math.pi / 3), abs=1e-6)


def test_loss_by_hand() -> None:
    s = torch.tensor([0.0, 1.0, -2.0])
    # -log sigmoid(x) = log(1 + exp(-x)), x = s / temperature
    assert gpm_loss(s).tolist() == pytest.approx([math.log(2), math.log1p(math.exp(-1)), math.log1p(math.exp(2))], rel=1e-6)
    assert gpm_loss(s, 0.5).tolist() == pytest.approx([math.log(2), math.log1p(math.exp(-2)), math.log1p(math.exp(4))], rel=1e-6)


def test_an_untrained_model_is_consistent_by_construction() -> None:
    torch.manual_seed(0)
    model = load_gpm(RewardBackboneConfig(name="builtin:tiny"), GPMHeadConfig(dim=4, scales="learned"))
    prompts, a, b = ["q:", "q:", "r:"], ["rock", "paper", "x"], ["paper", "paper", "yy"]
    forward, backward = model.probs(prompts, a, b), model.probs(prompts, b, a)
    assert torch.allclose(forward + backward, torch.ones(3), atol=1e-6)
    assert float(forward[1]) == 0.5  # a completion ties with itself
    assert torch.allclose(model.embeddings(prompts, a).norm(dim=-1), torch.ones(3), atol=1e-5)  # normalized
    with pytest.raises(TypeError, match="no scalar reward"):
        model.score(prompts, a)


# --------------------------------------------------------------------------- the cycle


def _cycle_file(path: Path, prompts: int, repeat: int) -> Path:
    rows = [{"prompt": f"q{i}:", "chosen": c, "rejected": r} for i in range(prompts) for c, r in CYCLE]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows * repeat))
    return path


def _base(tmp_path: Path) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return {
        "seed": 1,
        "model": {"name": "builtin:tiny"},
        "data": {
            "path": str(_cycle_file(tmp_path / "train.jsonl", 8, 4)),
            "eval_path": str(_cycle_file(tmp_path / "cycle.jsonl", 8, 1)),  # every edge once
            "heldout_size": 1000,
        },
        "train": {"epochs": 3, "batch_size": 12, "micro_batch_size": 12, "optim": {"lr": 3e-4}},
    }


@pytest.fixture(scope="module")
def cycle_gpm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The default GPM (dim 8, unit-length representations, temperature 0.1) trained on the cycle."""
    tmp = tmp_path_factory.mktemp("gpm")
    config = parse_config(GPMConfig, _base(tmp) | {"run_dir": str(tmp / "run")})
    return train_gpm(config), tmp


def test_gpm_fits_a_cycle_that_bradley_terry_cannot(cycle_gpm: tuple[Any, Path]) -> None:
    result, tmp = cycle_gpm
    bt = train_reward_model(parse_config(RewardModelConfig, _base(tmp) | {"run_dir": str(tmp / "bt")}))
    gpm_acc, bt_acc = result.last_eval["eval/accuracy"], bt.last_eval["eval/accuracy"]
    print(f"cycle accuracy: GPM {gpm_acc:.3f} (before {result.first_eval['eval/accuracy']:.3f}), BT {bt_acc:.3f}")
    assert gpm_acc >= 0.9
    # Any scalar reward gets at most 2 of a prompt's 3 cycle edges right (ties count 1/2).
    assert bt_acc <= 2 / 3 + 1e-6
    assert result.last_eval["eval/loss"] < 0.1 < result.first_eval["eval/loss"]
    assert (result.run_dir / "final" / "gpm.json").is_file() and (result.run_dir / "eval.json").is_file()


def test_one_block_without_normalization_fits_the_cycle(tmp_path: Path) -> None:
    """k = 1 (dim 2) is enough for a 3-cycle. (With unit-length 2-dim representations the
    fit can stall where all three collapse onto one direction, a local minimum of the cycle's
    loss; unnormalized, or with more blocks, it does not.)"""
    config = parse_config(GPMConfig, _base(tmp_path) | {
        "run_dir": str(tmp_path / "run"), "gpm": {"dim": 2, "normalize": False, "temperature": 1.0},
    })
    assert train_gpm(config).last_eval["eval/accuracy"] >= 0.9


# --------------------------------------------------------------------------- saving


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = load_gpm(RewardBackboneConfig(name="builtin:tiny"), GPMHeadConfig(dim=6, scales="learned", temperature=0.3))
    with torch.no_grad():
        model.log_scales.copy_(torch.tensor([0.1, -0.2, 0.3]))
    prompts, a, b = ["q:", "r:"], ["rock", "paper"], ["paper", "scissors"]
    folder = model.save(tmp_path / "gpm")
    assert not (tmp_path / "gpm.tmp").exists()
    loaded = GeneralPreferenceModel.load(folder)
    assert loaded.config == model.config and loaded.pooling == model.pooling
    assert torch.allclose(loaded.log_scales, model.log_scales)
    assert torch.allclose(loaded.embeddings(prompts, a), model.embeddings(prompts, a), atol=1e-6)
    assert torch.allclose(loaded.probs(prompts, a, b), model.probs(prompts, a, b), atol=1e-6)
    # Saving over an existing model replaces it; a GPM folder is not a reward model folder.
    model.save(folder)
    with pytest.raises(RewardlabError, match="not a reward model folder"):
        RewardModel.load(folder)
    with pytest.raises(RewardlabError, match="not a general preference model folder"):
        GeneralPreferenceModel.load(tmp_path)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="dim: must be even"):
        parse_config(GPMConfig, {"gpm": {"dim": 3}})
    with pytest.raises(ConfigError, match="Bradley-Terry terms"):
        parse_config(GPMConfig, {"loss": {"use_margin": True}})


# --------------------------------------------------------------------------- the judge


def test_a_saved_gpm_is_a_judge_by_name(cycle_gpm: tuple[Any, Path]) -> None:
    result, _ = cycle_gpm
    folder = str(result.run_dir / "final")
    pref = build_preference_fn(JudgeConfig(function=JUDGE, args={"path": folder}), [], "preference.online.judge")
    prompts = ["q0:", "q1:", "q2:", "q3:"]
    a, b = ["rock", "scissors", "paper", "rock"], ["scissors", "paper", "rock", "rock"]
    probs = pref.probs(prompts, a, b, {"answer": ["x"] * 4})
    assert probs.dtype == torch.float32 and probs.shape == (4,)
    assert (probs[:3] > 0.9).all() and float(probs[3]) == 0.5
    reverse = pref.probs(prompts, b, a, {})
    assert torch.allclose(probs + reverse, torch.ones(4), atol=1e-6)
    assert cached_gpm(folder) is cached_gpm(folder + "/")  # loaded once per path
    # The cached model evaluates the cycle as the run's last evaluation did.
    pairs = [RewardPair(f"q{i}:", c, r) for i in range(8) for c, r in CYCLE]
    found = evaluate_gpm(cached_gpm(folder), pairs)
    assert found["eval/accuracy"] == pytest.approx(result.last_eval["eval/accuracy"])
    assert evaluate_gpm(cached_gpm(folder), []) == {}


def test_judge_errors(tmp_path: Path) -> None:
    pref = build_preference_fn(JudgeConfig(function=JUDGE, args={"path": str(tmp_path)}), [], "preference.online.judge")
    with pytest.raises(RewardlabError, match="not a general preference model folder"):
        pref.probs(["q:"], ["a"], ["b"], {})
    bare = build_preference_fn(JudgeConfig(function=JUDGE), [], "preference.online.judge")
    with pytest.raises(RewardlabError, match="needs arg 'path'"):
        bare.probs(["q:"], ["a"], ["b"], {})


def test_an_online_run_is_labelled_by_a_gpm(
    cycle_gpm: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from preference_setup import preference_config

    from rewardlab.trainers.preference_online import train_online_preference

    result, _ = cycle_gpm
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(40)))
    online_section = {
        "method": "sppo", "steps": 2, "prompts_per_step": 4, "num_generations": 3,
        "judge": {"function": JUDGE, "args": {"path": str(result.run_dir / "final")}},
    }
    config = preference_config(
        tmp_path,
        data={"path": str(tmp_path / "prompts.jsonl"), "heldout_size": 8},
        preference={"online": online_section},
    )
    calls: list[int] = []
    model = cached_gpm(result.run_dir / "final")
    original = model.probs
    monkeypatch.setattr(model, "probs", lambda p, a, b, **kw: calls.append(len(p)) or original(p, a, b, **kw))
    online = train_online_preference(config)
    assert online.steps == 2
    assert calls and sum(calls) == 2 * 4 * 3  # steps x prompts x the 3 pairs of 3 samples


def test_rm_train_with_a_gpm_section_trains_a_gpm(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "rm", "train", "--set", "gpm.dim=4", "--set", "data.num_examples=32",
         "--set", "data.heldout_size=8", "--set", "train.epochs=1", "--set", f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "gpm.json").is_file() and "after: accuracy=" in done.stdout


def test_a_crashed_gpm_run_resumes_exactly(tmp_path: Path) -> None:
    """Crash after step 5 of 8 (checkpoints every 3 steps), resume from step 3: the metrics and
    the final weights equal those of the run never stopped."""
    from safetensors.torch import load_file

    from rewardlab.checkpoint import list_checkpoints
    from rewardlab.tracking import read_metrics

    def config(name: str) -> GPMConfig:
        base = _base(tmp_path / name)
        base["train"]["epochs"] = 1  # 8 steps
        extra = {"run_dir": str(tmp_path / name / "run"), "checkpoint": {"every": 3}, "eval": {"every": 4}}
        return parse_config(GPMConfig, base | extra)

    straight = train_gpm(config("a"))

    def crash(step: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise KeyboardInterrupt  # as a second Ctrl-C would: no checkpoint of its own

    interrupted = config("b")
    with pytest.raises(KeyboardInterrupt):
        train_gpm(interrupted, on_step=crash)
    folder = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(folder)] == ["step-000003"]
    resumed = train_gpm(interrupted, resume=folder)
    assert resumed.steps == straight.steps == 8 and resumed.first_eval == {}
    assert list(read_metrics(folder / "metrics.jsonl")) == list(read_metrics(straight.run_dir / "metrics.jsonl"))
    a = {p.name: load_file(str(p)) for p in (straight.run_dir / "final").glob("*.safetensors")}
    b = {p.name: load_file(str(p)) for p in (folder / "final").glob("*.safetensors")}
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])
