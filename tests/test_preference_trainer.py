"""The offline preference trainer: pair data, the fields the losses see, micro-batch
invariance, diagnostics, and every offline loss raising a known gold reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from preference_setup import preference_config

from rewardlab.config import DataConfig, PreferenceConfig
from rewardlab.data.datasets import load_rows
from rewardlab.data.preferences import heldout_pairs, preference_pairs
from rewardlab.data.tasks import make_task
from rewardlab.errors import ConfigError, DataError
from rewardlab.models.loading import load_policy
from rewardlab.trainers.learner import make_reference
from rewardlab.trainers.preference import preference_step, train_preference
from rewardlab.trainers.preference_views import cached_logprobs, pair_batch, pairwise_fields

TESTS = Path(__file__).parent

_config = preference_config


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


# --------------------------------------------------------------------------- data


def test_pair_rows_are_checked_naming_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: the row needs 'prompt', 'chosen' and 'rejected'"):
        load_rows(path, kind="pair")
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": ""}\n')
    with pytest.raises(DataError, match=r"line 1: field 'rejected' is empty"):
        load_rows(path, kind="pair")


def test_conversational_pairs_render_the_prompt_and_the_last_reply(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    path.write_text(json.dumps(row) + "\n")
    _, tokenizer = load_policy(PreferenceConfig().model, seed=0)
    pairs, skipped = preference_pairs(DataConfig(path=str(path)), tokenizer, 0)
    assert skipped == 0 and (pairs[0].chosen, pairs[0].rejected) == ("4", "5")
    assert "2+2?" in pairs[0].prompt and pairs[0].prompt != "2+2?"  # through the chat template


def test_task_pairs_prefer_the_right_answer_to_a_wrong_one() -> None:
    data = DataConfig(task="arithmetic", num_examples=50, heldout_size=20)
    pairs, _ = preference_pairs(data, None, seed=0)
    task = make_task("arithmetic", {})
    reward = task.reward_fn()
    prompts = [p.prompt for p in pairs]
    assert reward(prompts, [p.chosen for p in pairs], answer=[p.chosen for p in pairs]) == [1.0] * 50
    assert all(p.chosen != p.rejected for p in pairs)
    held = heldout_pairs(data, None, seed=0)
    assert len(held) == 20 and not {p.prompt for p in held} & set(prompts)


def test_missing_num_examples_for_a_task_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="data.num_examples"):
        preference_pairs(DataConfig(task="arithmetic", num_examples=None), None, 0)


# --------------------------------------------------------------------------- fields and steps


def test_loss_fields_views_of_a_pair_batch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _, tokenizer = load_policy(config.model, seed=0)
    pairs, _ = preference_pairs(config.data, tokenizer, 0)
    batch = pair_batch(tokenizer, pairs[:3])
    assert batch.size == 6 and batch.completion_mask.sum(-1).tolist() == [6] * 6  # 5 chars + EOS
    token_logp = torch.randn(6, 6)
    fields = pairwise_fields(token_logp, torch.zeros(6, 6), batch.completion_mask)
    assert torch.allclose(fields["chosen_logp"], token_logp[:3].sum(-1))
    assert torch.allclose(fields["rejected_logp"], token_logp[3:].sum(-1))
    assert fields["label"].tolist() == [True] * 3 + [False] * 3
    assert torch.equal(fields["list_logp"][:, 0], fields["chosen_logp"])
    assert fields["list_scores"].tolist() == [[1.0, 0.0]] * 3


def test_reference_logprobs_are_cached_once_and_match_a_fresh_pass(tmp_path: Path) -> None:
    config = _config(tmp_path)
    policy, tokenizer = load_policy(config.model, seed=0)
    pairs, _ = preference_pairs(config.data, tokenizer, 0)
    cached = cached_logprobs(policy, tokenizer, pairs[:5], 2, 1.0, as_reference=True)
    batch = pair_batch(tokenizer, pairs[:5])
    from rewardlab.models.logprobs import batch_logprobs

    fresh = batch_logprobs(policy, batch, 1.0, 10)
    for i, rows in enumerate(cached):
        assert torch.allclose(rows[0], fresh[i, :6], atol=1e-5)
        assert torch.allclose(rows[1], fresh[5 + i, :6], atol=1e-5)


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_micro_batches_give_the_whole_batch_gradient(tmp_path: Path, loss: str) -> None:
    config = _config(tmp_path, **{"preference.losses": [{"name": loss}]})
    policy, tokenizer = load_policy(config.model, seed=0)
    pairs, _ = preference_pairs(config.data, tokenizer, 0)
    reference = make_reference(policy)
    # a reference that differs from the policy, so the losses are not at their symmetric point
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = cached_logprobs(reference, tokenizer, pairs[:8], 8, 1.0, as_reference=True)
    grads = []
    for micro in (8, 3):
        policy.zero_grad()
        cfg = config.model_copy(update={"train": config.train.model_copy(update={"micro_batch_size": micro})})
        preference_step(policy, tokenizer, pairs, ref, list(range(8)), cfg)
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    # KTO's reference point is a per-micro-batch estimate (detached), so only DPO is exact
    tolerance = 1e-6 if loss == "dpo" else 5e-3
    assert torch.allclose(grads[0], grads[1], atol=tolerance)


# --------------------------------------------------------------------------- end to end


def test_dpo_run_logs_the_diagnostics(tmp_path: Path) -> None:
    result = train_preference(_config(tmp_path, **{"train.epochs": 1, "eval.every": 3}))
    keys = set(result.last_eval)
    assert {"eval/reward_greedy", "eval/ranking_accuracy", "eval/reward_accuracy", "eval/reward_margin", "eval/kl"} <= keys
    assert result.first_eval["eval/kl"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    assert (result.run_dir / "final" / "config.json").is_file()


def _offline_pairwise_losses() -> list[str]:
    """Every loss that trains on offline pairs alone (not the online methods' losses, which
    need win rates or a sampled opponent, and not the token-level ones, tested below)."""
    from rewardlab.algorithms import PREFERENCE_LOSSES
    from rewardlab.trainers.preference_views import available_fields

    have = available_fields("pairwise")
    return sorted(e.name for e in PREFERENCE_LOSSES if set(e.inputs) <= have and e.name != "apo_down")


def test_the_offline_losses_are_the_expected_ones() -> None:
    assert len(_offline_pairwise_losses()) == 19
    assert {"dpo", "kto", "lipo", "cpl", "selm"} <= set(_offline_pairwise_losses())


@pytest.mark.parametrize("loss", _offline_pairwise_losses())
def test_offline_loss_raises_the_gold_reward(tmp_path: Path, warm_start: Path, loss: str) -> None:
    """Gold reward = the share of digits; chosen completions are digits, rejected letters.
    Two epochs over 96 pairs take the greedy completions from letters to digits."""
    config = _config(tmp_path, **{"model.name": str(warm_start), "preference.losses": [{"name": loss}]})
    result = train_preference(config)
    before, after = result.first_eval["eval/reward_greedy"], result.last_eval["eval/reward_greedy"]
    assert after >= before + 0.5, (loss, before, after)
    assert result.last_eval["eval/ranking_accuracy"] > result.first_eval["eval/ranking_accuracy"]


def test_apo_down_lowers_both_likelihoods_keeping_the_ranking(tmp_path: Path, warm_start: Path) -> None:
    """APO-down (arXiv 2408.06266) is for data whose chosen answers are worse than the model's
    own: it pushes the chosen likelihood down (less than the rejected), so on this set the gold
    reward is not what it raises; what it must do is lower chosen and rank chosen first."""
    result = train_preference(_config(tmp_path, **{"model.name": str(warm_start), "preference.losses": [{"name": "apo_down"}]}))
    assert result.last_eval["eval/logps_chosen"] < result.first_eval["eval/logps_chosen"]
    assert result.last_eval["eval/ranking_accuracy"] == 1.0


def test_losses_combine_with_weights(tmp_path: Path, warm_start: Path) -> None:
    config = _config(tmp_path, **{
        "model.name": str(warm_start), "train.epochs": 1,
        "preference.losses": [{"name": "dpo"}, {"name": "simpo", "weight": 0.5}],
    })
    result = train_preference(config)
    from rewardlab.tracking import read_metrics

    steps = [m for m in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in m]
    assert steps and all("dpo/reward_margin" in m and "simpo/reward_margin" in m for m in steps)


def test_token_level_losses_say_what_they_need(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tgdpo\) needs chosen_token_rewards.*preference.token_rewards"):
        train_preference(_config(tmp_path, **{"preference.losses": [{"name": "tgdpo"}], "train.epochs": 1}))


def test_rewardlab_train_runs_a_preference_config(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    config = _config(tmp_path, **{"train.epochs": 1}).model_dump(mode="json")
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(TESTS), COLUMNS="200")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rewardlab.cli", "train", *args],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )

    out = run(str(path))
    assert out.returncode == 0, out.stderr
    assert "ranking_accuracy=" in out.stdout and (tmp_path / "run" / "final").is_dir()
    bad = run(str(path), "--set", "preference.losses=[{name: dpoo}]", "--set", f"run_dir={tmp_path / 'other'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown preference_loss 'dpoo' (did you mean 'dpo'?)" in " ".join(bad.stderr.split())


def test_lora_reference_is_the_base_with_the_adapter_off(tmp_path: Path) -> None:
    """With LoRA the reference is the same network with its adapter disabled: after training
    the adapter, the sampled KL to it is no longer 0 (it would be, were the adapter left on)."""
    config = _config(tmp_path, **{"model.lora": {"r": 4}, "train.epochs": 1, "train.optim.lr": 1e-2})
    result = train_preference(config)
    assert result.first_eval["eval/kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(result.last_eval["eval/kl"]) > 1e-3


# --------------------------------------------------------------------------- online DPO


def test_best_worst_skips_prompts_without_a_preference_or_below_the_margin() -> None:
    from rewardlab.trainers.preference_online import best_worst

    win = torch.tensor([[0.5, 1.0, 0.0], [0.5, 0.5, 0.5], [0.4, 0.6, 0.5]])
    assert best_worst(win, 0.0) == [(0, 1, 2), (2, 1, 0)]
    assert best_worst(win, 0.3) == [(0, 1, 2)]


def test_online_dpo_raises_the_gold_reward(tmp_path: Path, warm_start: Path) -> None:
    """Online DPO (arXiv 2402.04792): the policy's own samples, labelled by the reward source
    (here the gold digit share itself), become best-vs-worst pairs."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(400)))
    config = _config(tmp_path, **{
        "model.name": str(warm_start),
        "data": {"path": str(prompts), "heldout_size": 24},
        "preference.online": {"steps": 12, "prompts_per_step": 16, "num_generations": 4},
    })
    from rewardlab.trainers.preference_online import train_online_preference

    result = train_online_preference(config)
    before, after = result.first_eval["eval/reward_greedy"], result.last_eval["eval/reward_greedy"]
    assert after >= before + 0.5, (before, after)
    from rewardlab.tracking import read_metrics

    steps = [m for m in read_metrics(result.run_dir / "metrics.jsonl") if "pairs" in m]
    assert len(steps) == 12 and all(0 <= m["pairs"] <= 16 for m in steps)
    assert any("loss" in m for m in steps)
