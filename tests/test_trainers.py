"""End-to-end runs of the trainers on the built-in tiny model: learning, exact resume, LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardlab.checkpoint import list_checkpoints
from rewardlab.config import RunConfig, SFTConfig, parse_config
from rewardlab.errors import RewardlabError
from rewardlab.tracking import read_metrics
from rewardlab.trainers.online import train
from rewardlab.trainers.sft import train_sft

TESTS = Path(__file__).parent


def _with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each dotted ``key: value`` of ``overrides`` set in it (in place)."""
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def _rl_config(run_dir: Path, **overrides: Any) -> RunConfig:
    data: dict[str, Any] = {
        "seed": 3,
        "run_dir": str(run_dir),
        "data": {"task": "arithmetic", "heldout_size": 16},
        "rewards": [{"name": "dense_rewards:digit_fraction"}],
        "rollout": {"num_generations": 4, "max_new_tokens": 6},
        "train": {"steps": 12, "prompts_per_step": 8, "optim": {"lr": 3e-3}},
        "eval": {"every": 0, "pass_k": 2, "batch_size": 64},
        "checkpoint": {"every": 0},
        "logging": {"samples": 2},
    }
    return parse_config(RunConfig, _with_overrides(data, overrides))


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _train_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without wall-clock timings (which differ from run to run)."""
    return [
        {k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(run_dir / "metrics.jsonl")
    ]


def test_grpo_raises_a_dense_reward(tmp_path: Path) -> None:
    result = train(_rl_config(tmp_path / "run", **{"train.steps": 25}))
    rewards = [r["reward"] for r in _train_metrics(result.run_dir) if "reward" in r]
    assert len(rewards) == 25
    early, late = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert late > early + 0.1, (early, late)
    run = result.run_dir
    assert (run / "config.yaml").is_file()
    assert (run / "final" / "config.json").is_file()
    assert (run / "report" / "overview.png").is_file()
    samples = (run / "samples" / "step-000025.jsonl").read_text().splitlines()
    assert len(samples) == 2 and "completion" in json.loads(samples[0])
    assert {"eval/accuracy", "eval/pass@2", "eval/reward_sampled"} <= set(result.last_eval)


class _Crash(Exception):
    pass


def _crash_at(step: int) -> Any:
    def on_step(current: int, metrics: dict[str, float]) -> None:
        if current == step:
            raise _Crash

    return on_step


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # fully on-policy: one optimizer step per batch
        {"train.ppo_epochs": 2, "train.mini_batch_size": 16, "train.micro_batch_size": 8,
         "algorithm.kl.coef": 0.05, "train.optim.warmup_steps": 3},
    ],
    ids=["on_policy", "epochs_minibatches_kl"],
)
def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, overrides: dict[str, Any]) -> None:
    settings = {"train.steps": 6, "checkpoint.every": 2, "eval.every": 3, **overrides}
    straight = train(_rl_config(tmp_path / "straight", **settings))

    interrupted = _rl_config(tmp_path / "interrupted", **settings)
    with pytest.raises(_Crash):
        train(interrupted, on_step=_crash_at(5))  # dies after step 5, last checkpoint at 4
    assert [p.name for p in list_checkpoints(tmp_path / "interrupted")] == ["step-000002", "step-000004"]
    resumed = train(interrupted, resume=tmp_path / "interrupted")

    assert _train_metrics(resumed.run_dir) == _train_metrics(straight.run_dir)
    a = torch.load(straight.run_dir / "checkpoints" / "step-000006" / "trainer.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoints" / "step-000006" / "trainer.pt", weights_only=True)
    assert a["step"] == b["step"] == 6


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = _rl_config(tmp_path / "run", **{"train.steps": 3})
    with pytest.raises(_Crash):
        train(config, on_step=_crash_at(1))
    with pytest.raises(RewardlabError, match="no checkpoint yet"):
        train(config, resume=tmp_path / "run")


def test_new_run_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    train(_rl_config(tmp_path / "run", **{"train.steps": 1}))
    with pytest.raises(RewardlabError, match="already holds a run"):
        train(_rl_config(tmp_path / "run", **{"train.steps": 1}))


def test_lora_trains_only_the_adapter_and_uses_the_base_as_reference(tmp_path: Path) -> None:
    config = _rl_config(
        tmp_path / "run",
        **{"train.steps": 4, "model.lora": {"r": 4}, "algorithm.kl.coef": 0.1, "checkpoint.every": 2},
    )
    result = train(config)
    metrics = _train_metrics(result.run_dir)
    kls = [r["kl"] for r in metrics if "kl" in r]
    assert len(kls) == 4 and kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0
    from safetensors.torch import load_file

    saved = load_file(str(list_checkpoints(result.run_dir)[-1] / "weights.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    # final/ is a plain model (adapter merged) that loads without peft.
    assert not (result.run_dir / "final" / "adapter_config.json").exists()


def test_sft_learns_the_demonstrations(tmp_path: Path) -> None:
    config = parse_config(
        SFTConfig,
        {
            "seed": 0,
            "run_dir": str(tmp_path / "sft"),
            "data": {"task": "reverse", "task_args": {"max_len": 3}, "num_examples": 64, "heldout_size": 16},
            "rollout": {"max_new_tokens": 5},
            "train": {"epochs": 15, "batch_size": 16, "optim": {"lr": 3e-3}},
            "eval": {"every": 0, "pass_k": 1},
        },
    )
    result = train_sft(config)
    losses = [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert result.first_eval["eval/accuracy"] == 0.0
    assert (result.run_dir / "final" / "model.safetensors").is_file()


def _sft_config(run_dir: Path, **overrides: Any) -> SFTConfig:
    data: dict[str, Any] = {
        "seed": 2,
        "run_dir": str(run_dir),
        "data": {"task": "reverse", "task_args": {"max_len": 3}, "num_examples": 40, "heldout_size": 8},
        "rollout": {"max_new_tokens": 5},
        "train": {"epochs": 3, "batch_size": 16, "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "cosine"}},
        "eval": {"every": 5, "pass_k": 2, "num_samples": 2},
        "checkpoint": {"every": 2},
        "logging": {"samples": 2},
    }
    return parse_config(SFTConfig, _with_overrides(data, overrides))


def _saved_samples(run_dir: Path) -> dict[str, str]:
    """The evaluation samples a run saved (``samples/step-*.jsonl``; an agent run's are its
    greedy transcripts), by file name."""
    return {f.name: f.read_text() for f in run_dir.glob("samples/*.jsonl")}


@pytest.mark.parametrize("agent", [False, True], ids=["task", "agent_with_demo_noise"])
def test_a_crashed_sft_run_resumes_exactly(tmp_path: Path, agent: bool) -> None:
    """3 epochs of 3 batches (the last one short), a checkpoint every 2 steps, an evaluation
    at step 5: crash after step 5, resume from step 4 (inside the second epoch, so the first
    epoch's order is replayed and a batch of the second skipped) and redo the evaluation: the
    metrics, the saved samples and the final weights equal the straight run's."""
    from safetensors.torch import load_file

    extra: dict[str, Any] = {}
    if agent:
        extra = {
            "data": {"task": "guess_number", "task_args": {"high": 8}, "num_examples": 40, "heldout_size": 4},
            "agent": {"env": "guess_number", "max_turns": 3, "demo_noise": 0.3},
            "rollout.max_new_tokens": 4,
        }
    straight = train_sft(_sft_config(tmp_path / "straight", **extra))
    interrupted = _sft_config(tmp_path / "interrupted", **extra)
    with pytest.raises(_Crash):
        train_sft(interrupted, on_step=_crash_at(5))
    assert [p.name for p in list_checkpoints(tmp_path / "interrupted")] == ["step-000002", "step-000004"]
    assert "step-000005.jsonl" in _saved_samples(tmp_path / "interrupted")
    resumed = train_sft(interrupted, resume=tmp_path / "interrupted")

    assert straight.steps == resumed.steps == 9
    assert resumed.first_eval == {}  # the evaluation before training belongs to the first start
    assert _train_metrics(resumed.run_dir) == _train_metrics(straight.run_dir)
    assert _saved_samples(resumed.run_dir) == _saved_samples(straight.run_dir) != {}
    a = load_file(str(straight.run_dir / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sft_resume_refuses_changed_settings_and_a_new_run_in_its_folder(tmp_path: Path) -> None:
    config = _sft_config(tmp_path / "run", **{"checkpoint.every": 1})
    with pytest.raises(_Crash):
        train_sft(config, on_step=_crash_at(2))
    with pytest.raises(RewardlabError, match=r"already holds a run; resume it with rewardlab sft --resume"):
        train_sft(config)
    with pytest.raises(RewardlabError, match=r"train\.batch_size \(16 -> 8\)"):
        train_sft(_sft_config(tmp_path / "run", **{"train.batch_size": 8}), resume=tmp_path / "run")
    # A longer run changes a cosine schedule's learning rates: refused too.
    with pytest.raises(RewardlabError, match=r"train\.epochs \(3 -> 4\)"):
        train_sft(_sft_config(tmp_path / "run", **{"train.epochs": 4}), resume=tmp_path / "run")


def test_resume_refuses_changed_settings_but_allows_more_steps(tmp_path: Path) -> None:
    config = _rl_config(tmp_path / "run", **{"train.steps": 2, "checkpoint.every": 1})
    train(config)
    changed = _rl_config(tmp_path / "run", **{"train.steps": 3, "train.optim.lr": 1e-2})
    with pytest.raises(RewardlabError, match=r"train\.optim\.lr \(0\.003 -> 0\.01\)"):
        train(changed, resume=tmp_path / "run")
    longer = train(_rl_config(tmp_path / "run", **{"train.steps": 3}), resume=tmp_path / "run")
    assert [r["step"] for r in read_metrics(longer.run_dir / "metrics.jsonl")] == [0, 1, 2, 3]


@pytest.mark.parametrize("recipe", sorted(__import__("rewardlab.algorithms", fromlist=["RECIPES"]).RECIPES))
def test_every_recipe_trains_end_to_end(tmp_path: Path, recipe: str) -> None:
    """Each recipe's axis entries get the batch fields they ask for from the real loop."""
    config = _rl_config(
        tmp_path / recipe,
        **{"algorithm.recipe": recipe, "train.steps": 2, "train.ppo_epochs": 2, "train.mini_batch_size": 16,
           "algorithm.kl.coef": 0.05, "eval.pass_k": 1},
    )
    result = train(config)
    metrics = _train_metrics(result.run_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    kl_key = "kl" if config.algorithm.kl.placement == "loss" else "kl/sequence"
    assert all(math.isfinite(m["loss"]) and math.isfinite(m[kl_key]) for m in metrics[1:])
    if recipe == "ppo":  # the critic trains alongside the policy
        assert all(math.isfinite(m["critic/loss"]) for m in metrics[1:])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, False),  # GRPO on-policy: the learner's detached log-probs are the old ones
        ({"train.ppo_epochs": 2}, True),
        ({"train.mini_batch_size": 8}, True),  # 32 completions in 4 optimizer steps
        ({"train.mini_batch_size": 32}, False),
        ({"algorithm.kl.coef": 0.05}, True),  # kept for the kl/sequence metric
        ({"algorithm.token_masks": [{"name": "top_entropy"}]}, True),  # a mask reads entropy
    ],
)
def test_the_old_log_prob_pass_runs_only_when_something_reads_it(
    tmp_path: Path, overrides: dict[str, Any], expected: bool
) -> None:
    from rewardlab.trainers.online import needs_old_pass

    assert needs_old_pass(_rl_config(tmp_path / "run", **overrides)) is expected


def test_skipping_the_old_pass_on_policy_leaves_the_update_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On-policy, the learner's own detached log-probs replace the separate no-gradient pass:
    the same losses, gradient norms and weights as when the pass runs, to float rounding."""
    from rewardlab.trainers import online

    skipped = train(_rl_config(tmp_path / "skip", **{"train.steps": 3}))
    monkeypatch.setattr(online, "needs_old_pass", lambda config: True)
    computed = train(_rl_config(tmp_path / "pass", **{"train.steps": 3}))
    a, b = _train_metrics(skipped.run_dir), _train_metrics(computed.run_dir)
    steps = [(x, y) for x, y in zip(a, b, strict=True) if "loss" in x]
    assert len(steps) == 3
    for x, y in steps:
        assert x["reward"] == y["reward"]  # the same samples
        for key in ("loss", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    from safetensors.torch import load_file

    wa = load_file(str(skipped.run_dir / "final" / "model.safetensors"))
    wb = load_file(str(computed.run_dir / "final" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_training(tmp_path: Path, lora: bool) -> None:
    """Recomputing activations in the backward pass changes memory, not the result: the same
    losses, gradient norms and final weights, and generation still uses its KV cache."""
    overrides: dict[str, Any] = {"train.steps": 3}
    if lora:
        overrides["model.lora"] = {"r": 4, "alpha": 8}
    plain = train(_rl_config(tmp_path / "plain", **overrides))
    recomputed = train(_rl_config(tmp_path / "gc", **overrides, **{"model.gradient_checkpointing": True}))
    a, b = _train_metrics(plain.run_dir), _train_metrics(recomputed.run_dir)
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "loss", "grad_norm", "completion_length"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), key
    from safetensors.torch import load_file

    wa = load_file(str(plain.run_dir / "final" / "model.safetensors"))
    wb = load_file(str(recomputed.run_dir / "final" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_gradient_checkpointing_recomputes_layers_in_the_backward_pass() -> None:
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    def layer_calls(checkpointing: bool) -> int:
        policy, _ = load_policy(ModelConfig(gradient_checkpointing=checkpointing))
        calls = []
        # A sub-module's forward, wrapped: HF checkpoints the layer's forward (so the layer's
        # own hooks run once) and torch runs no module hooks while it recomputes.
        mlp = policy.model.layers[0].mlp
        forward = mlp.forward

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return forward(*args, **kwargs)

        mlp.forward = counted
        policy.train()
        policy(torch.tensor([[5, 6, 7, 8]])).logits.sum().backward()
        return len(calls)

    assert layer_calls(False) == 1
    assert layer_calls(True) == 2  # the forward, then its recomputation during backward
