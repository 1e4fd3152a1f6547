"""Online and iterative preference methods (online DPO, SELM, XPO, DNO, INPO, SPPO, Nash-MD),
the unpaired and listwise data formats, and the token-level losses with their token rewards,
each trained end to end on synthetic sets whose gold reward is known."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from preference_setup import preference_config
from test_trainers import _Crash, _crash_at

from rewardlab.config import PreferenceConfig
from rewardlab.errors import ConfigError
from rewardlab.tracking import read_metrics
from rewardlab.trainers.preference import train_preference
from rewardlab.trainers.preference_online import train_online_preference

ONLINE_METHODS = ["online_dpo", "selm", "xpo", "dno", "inpo", "sppo", "nash_md"]


def _prompts(path: Path, n: int = 400, start: int = 0) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(start, start + n)))
    return path


def _online(tmp_path: Path, warm_start: Path, method: str, **online: Any) -> PreferenceConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return preference_config(tmp_path, **{
        "model.name": str(warm_start),
        "data": {"path": str(_prompts(tmp_path / "prompts.jsonl")), "heldout_size": 24},
        "preference": {"online": {"method": method, "steps": 12, "prompts_per_step": 16, "num_generations": 4} | online},
    })


def _steps(result: Any) -> list[dict[str, float]]:
    return [m for m in read_metrics(result.run_dir / "metrics.jsonl") if "reward" in m]


# --------------------------------------------------------------------------- online methods


@pytest.mark.parametrize("method", ONLINE_METHODS)
def test_online_method_raises_the_gold_reward(tmp_path: Path, warm_start: Path, method: str) -> None:
    """From a model that answers digits or letters half the time each, twelve iterations of
    each method, labelled by the gold reward (the digit share), make greedy answers digits."""
    result = train_online_preference(_online(tmp_path, warm_start, method))
    before, after = result.first_eval["eval/reward_greedy"], result.last_eval["eval/reward_greedy"]
    assert after >= before + 0.5, (method, before, after)
    steps = _steps(result)
    assert len(steps) == 12 and sum("loss" in m for m in steps) >= 10
    assert steps[-1]["reward"] > steps[0]["reward"] + 0.3


def test_dno_trains_against_the_iterate_it_sampled_from(tmp_path: Path, warm_start: Path) -> None:
    """DNO's reference is pi_t: with one optimizer step per iteration the policy equals its
    reference when the loss is computed, so DPO's loss is exactly log 2 at every iteration;
    online DPO's reference stays pi_ref, so its loss moves away from log 2."""
    dno = _steps(train_online_preference(_online(tmp_path / "dno", warm_start, "dno", steps=4)))
    online = _steps(train_online_preference(_online(tmp_path / "odpo", warm_start, "online_dpo", steps=4)))
    assert all(m["loss"] == pytest.approx(math.log(2), abs=1e-5) for m in dno)
    assert abs(online[-1]["loss"] - math.log(2)) > 1e-3


def test_xpo_pairs_include_reference_samples(tmp_path: Path, warm_start: Path) -> None:
    steps = _steps(train_online_preference(_online(tmp_path, warm_start, "xpo", steps=3)))
    assert all(0.0 <= m["xpo/reference_chosen"] <= 1.0 for m in steps)
    assert all("xpo/exploration_term" in m for m in steps if "loss" in m)


def test_an_intransitive_judge_labels_online_pairs(tmp_path: Path, warm_start: Path) -> None:
    """A user's pairwise judge (not a reward) labels the samples: 'more digits wins'."""
    config = _online(tmp_path, warm_start, "sppo", steps=6)
    config.preference.online.judge.function = "judges:more_digits"  # type: ignore[union-attr]
    result = train_online_preference(config)
    assert result.last_eval["eval/reward_greedy"] >= result.first_eval["eval/reward_greedy"] + 0.5


def test_method_losses_are_checked(tmp_path: Path) -> None:
    assert preference_config(tmp_path, preference={"online": {"method": "xpo"}}).preference.losses[0].name == "xpo"
    with pytest.raises(ConfigError, match="method 'xpo' trains with the 'xpo' loss"):
        preference_config(tmp_path, preference={"losses": [{"name": "dpo"}], "online": {"method": "xpo"}})
    with pytest.raises(ConfigError, match="trains on single completions, so its only loss is 'sppo'"):
        preference_config(tmp_path, preference={"losses": [{"name": "sppo"}, {"name": "dpo"}], "online": {"method": "sppo"}})
    with pytest.raises(ConfigError, match=r"preference.losses\[0\] \(sppo\) needs win_rate"):
        train_preference(preference_config(tmp_path, preference={"losses": [{"name": "sppo"}]}))


def test_online_dpo_and_dno_beat_offline_dpo(tmp_path: Path, warm_start: Path) -> None:
    """The same labelling budget (1920 prompts x 4 samples scored by the gold reward) spent
    offline (best-vs-worst pairs of the starting model's samples, 3 epochs of DPO) or online
    (60 iterations of online DPO or DNO). The gold reward is the matched prefix of a target
    string (tests/dense_rewards.py:target_prefix): the starting model's samples show its first
    character only, so offline pairs cannot teach the second; online samples can. Measured by
    the sampled gold reward on held-out prompts, averaged over two seeds."""
    from dense_rewards import target_prefix

    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy
    from rewardlab.rollout.hf import SamplingParams, decode_completions, generate

    steps, per_step, n = 60, 16, 4
    scores: dict[str, list[float]] = {"offline": [], "online_dpo": [], "dno": []}
    policy, tokenizer = load_policy(ModelConfig(name=str(warm_start)))
    for seed in (1, 2):
        torch.manual_seed(seed)
        prompts = [f"q{i}:" for i in range(1000, 1000 + steps * per_step)]
        samples = decode_completions(tokenizer, generate(policy, tokenizer, prompts, SamplingParams(n=n, max_new_tokens=5)))
        offline = tmp_path / f"offline{seed}.jsonl"
        offline.write_text("".join(json.dumps(row) + "\n" for row in _best_worst_rows(prompts, samples, n, target_prefix)))
        common = {"seed": seed, "model.name": str(warm_start), "train.optim.lr": 5e-4,
                  "rewards": [{"name": "dense_rewards:target_prefix"}]}
        folder = tmp_path / f"s{seed}"
        result = train_preference(preference_config(
            folder / "offline", **common, data={"path": str(offline), "heldout_size": 24}, **{"train.epochs": 3}
        ))
        scores["offline"].append(result.last_eval["eval/reward_sampled"])
        for method in ("online_dpo", "dno"):
            result = train_online_preference(preference_config(
                folder / method, **common, data={"path": str(_prompts(tmp_path / "p.jsonl", 1000)), "heldout_size": 24},
                preference={"online": {"method": method, "steps": steps, "prompts_per_step": per_step, "num_generations": n}},
            ))
            scores[method].append(result.last_eval["eval/reward_sampled"])
    mean = {name: sum(v) / len(v) for name, v in scores.items()}
    assert mean["online_dpo"] > mean["offline"] + 0.03, scores
    assert mean["dno"] > mean["offline"] + 0.03, scores


def _best_worst_rows(prompts: list[str], samples: list[str], n: int, gold: Any) -> list[dict[str, str]]:
    rows = []
    for i, prompt in enumerate(prompts):
        group = samples[i * n : (i + 1) * n]
        score = gold(None, group)
        best = max(range(n), key=lambda j: score[j])
        worst = min(range(n), key=lambda j: score[j])
        if score[best] > score[worst] and group[best] and group[worst]:  # datasets hold no empty answers
            rows.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst]})
    return rows


# --------------------------------------------------------------------------- data formats


def _unpaired(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            good = i % 2 == 0
            text = "".join(rng.choice("0123456789" if good else "abcdefghij") for _ in range(5))
            f.write(json.dumps({"prompt": f"q{i}:", "completion": text, "label": good}) + "\n")
    return path


def _ranked(path: Path, n: int, seed: int = 0) -> Path:
    """Lists of three: all digits (score 1), mixed (0.4), all letters (0)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            digits = "".join(rng.choice("0123456789") for _ in range(5))
            letters = "".join(rng.choice("abcdefghij") for _ in range(5))
            items = [(digits, 1.0), (digits[:2] + letters[2:], 0.4), (letters, 0.0)]
            rng.shuffle(items)
            f.write(json.dumps({"prompt": f"q{i}:", "completions": [t for t, _ in items], "scores": [s for _, s in items]}) + "\n")
    return path


def test_kto_trains_on_unpaired_rows(tmp_path: Path, warm_start: Path) -> None:
    config = preference_config(tmp_path, **{
        "model.name": str(warm_start),
        "data": {"path": str(_unpaired(tmp_path / "u.jsonl", 192)), "heldout_size": 24},
        "preference": {"losses": [{"name": "kto"}]},
    })
    result = train_preference(config)
    assert result.last_eval["eval/reward_greedy"] >= result.first_eval["eval/reward_greedy"] + 0.5
    assert "eval/ranking_accuracy" not in result.last_eval  # unpaired rows have no pairs to rank


def test_a_pairwise_loss_on_unpaired_rows_names_the_losses_that_fit(tmp_path: Path) -> None:
    config = preference_config(tmp_path, data={"path": str(_unpaired(tmp_path / "u.jsonl", 8)), "heldout_size": 4})
    with pytest.raises(ConfigError, match=r"losses\[0\] \(dpo\) needs chosen_logp.*unpaired rows.*: kto"):
        train_preference(config)


def test_lipo_trains_on_ranked_lists(tmp_path: Path, warm_start: Path) -> None:
    config = preference_config(tmp_path, **{
        "model.name": str(warm_start),
        "data": {"path": str(_ranked(tmp_path / "r.jsonl", 96)), "eval_path": str(_ranked(tmp_path / "e.jsonl", 24, 1)),
                 "heldout_size": 24},
        "preference": {"losses": [{"name": "lipo"}]},
    })
    result = train_preference(config)
    assert result.last_eval["eval/reward_greedy"] >= result.first_eval["eval/reward_greedy"] + 0.5
    # ranking is measured on each held-out list's best versus worst completion
    assert result.last_eval["eval/ranking_accuracy"] > result.first_eval["eval/ranking_accuracy"]


# --------------------------------------------------------------------------- token rewards


def test_tgdpo_is_guided_by_a_dpo_model(tmp_path: Path, warm_start: Path) -> None:
    """TGDPO's guidance is the token-level implicit reward of a DPO-trained model: first train
    one (an epoch of DPO), then TGDPO from the same start with it as the guide."""
    guide = train_preference(preference_config(tmp_path / "guide", **{"model.name": str(warm_start), "train.epochs": 1}))
    config = preference_config(tmp_path / "tg", **{
        "model.name": str(warm_start),
        "preference": {"losses": [{"name": "tgdpo"}],
                       "token_rewards": {"source": "guide", "model": str(guide.run_dir / "final")}},
    })
    result = train_preference(config)
    assert result.last_eval["eval/reward_greedy"] >= result.first_eval["eval/reward_greedy"] + 0.5


def test_treg_uses_self_generated_token_rewards(tmp_path: Path, warm_start: Path) -> None:
    config = preference_config(tmp_path, **{
        "model.name": str(warm_start),
        "preference": {"losses": [{"name": "treg"}], "token_rewards": {"source": "contrastive"}},
    })
    result = train_preference(config)
    assert result.last_eval["eval/reward_greedy"] >= result.first_eval["eval/reward_greedy"] + 0.5


def test_token_rewards_are_the_guides_log_ratio(tmp_path: Path, warm_start: Path) -> None:
    """With the guide equal to the reference, every token reward is 0: TGDPO is then DPO."""
    from rewardlab.config import ModelConfig
    from rewardlab.data.preferences import load_preference_data
    from rewardlab.models.loading import load_policy
    from rewardlab.trainers.preference_views import cached_logprobs
    from rewardlab.trainers.token_rewards import token_rewards

    config = preference_config(tmp_path, **{
        "model.name": str(warm_start),
        "preference": {"losses": [{"name": "tgdpo"}], "token_rewards": {"source": "guide", "model": str(warm_start)}},
    })
    policy, tokenizer = load_policy(ModelConfig(name=str(warm_start)))
    examples = load_preference_data(config.data, tokenizer, 0).examples[:4]
    ref = cached_logprobs(policy, tokenizer, examples, 4, 1.0, as_reference=True)
    rewards = token_rewards(config, policy, tokenizer, examples, ref)["token_rewards"]
    assert [len(r) for r in rewards] == [2] * 4
    assert all(torch.allclose(t, torch.zeros_like(t), atol=1e-6) for rows in rewards for t in rows)


def test_online_settings_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rollout.top_p: nash_md samples its opponent"):
        preference_config(tmp_path, preference={"online": {"method": "nash_md"}}, **{"rollout.top_p": 0.9})
    with pytest.raises(ConfigError, match="token rewards .* are computed for offline runs only"):
        preference_config(tmp_path, preference={"online": {"method": "dno"}, "token_rewards": {"source": "contrastive"}})


def test_conversational_unpaired_rows_evaluate_on_their_desirable_answers(tmp_path: Path) -> None:
    """Held-out prompts of an unpaired file are its desirable rows, with their completion as
    the answer, whatever the prompt's form (here lists of messages)."""
    path = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"q{i}"}],
         "completion": [{"role": "assistant", "content": "123" if i % 2 else "abc"}], "label": bool(i % 2)}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = preference_config(tmp_path, **{
        "data": {"path": str(path), "heldout_size": 8}, "preference": {"losses": [{"name": "kto"}]},
        "rewards": [{"name": "exact_match"}], "train.epochs": 1,
    })
    result = train_preference(config)
    assert "eval/reward_greedy" in result.last_eval and result.steps == 1


# --------------------------------------------------------------------------- resume


def _logged(run_dir: Path) -> list[dict[str, Any]]:
    return list(read_metrics(run_dir / "metrics.jsonl"))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online_dno"])
def test_a_crashed_preference_run_resumes_exactly(tmp_path: Path, warm_start: Path, online: bool) -> None:
    """Crash after step 5 (checkpoints at 2 and 4), resume: the metrics and the final
    weights equal those of the same run uninterrupted."""
    from safetensors.torch import load_file

    from rewardlab.checkpoint import list_checkpoints

    def config(folder: str) -> PreferenceConfig:
        settings = {"checkpoint.every": 2, "eval.every": 3}
        if online:
            base = _online(tmp_path / folder, warm_start, "dno", steps=7)
            shared = preference_config(tmp_path / folder, **settings)
            return base.model_copy(update={"checkpoint": shared.checkpoint, "eval": shared.eval})
        return preference_config(tmp_path / folder, **{"model.name": str(warm_start), "train.epochs": 2,
                                                       "train.batch_size": 32, **settings})

    run = train_online_preference if online else train_preference
    straight = run(config("straight"))
    interrupted = config("interrupted")
    with pytest.raises(_Crash):
        run(interrupted, on_step=_crash_at(5))
    folder = Path(interrupted.run_dir or "")
    assert [p.name for p in list_checkpoints(folder)] == ["step-000002", "step-000004"]
    resumed = run(interrupted, resume=folder)
    assert resumed.steps == straight.steps
    assert _logged(folder) == _logged(straight.run_dir)
    a = load_file(str(straight.run_dir / "final" / "model.safetensors"))
    b = load_file(str(folder / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_training_settings(tmp_path: Path, warm_start: Path) -> None:
    config = preference_config(tmp_path, **{"model.name": str(warm_start), "train.epochs": 1, "checkpoint.every": 1})
    with pytest.raises(_Crash):
        train_preference(config, on_step=_crash_at(2))
    changed = config.model_copy(update={"seed": 7})
    with pytest.raises(Exception, match=r"--resume .*seed \(1 -> 7\)"):
        train_preference(changed, resume=Path(config.run_dir or ""))
