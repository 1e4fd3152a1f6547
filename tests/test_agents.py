"""Multi-turn episodes: token layout and masks, containment of bad environments, turn tensors."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import torch

from rewardlab.agents.env import Environment, StepResult
from rewardlab.agents.rollout import (
    Conversation,
    call_all,
    demonstration,
    environment_factory,
    per_token,
    run_episodes,
    to_batch,
)
from rewardlab.config import AgentConfig, ModelConfig
from rewardlab.data.tasks import make_task
from rewardlab.errors import ConfigError
from rewardlab.models.loading import load_policy
from rewardlab.rollout.hf import SamplingParams


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return load_policy(ModelConfig(), seed=0)


def agent(env: str, **kw: Any) -> AgentConfig:
    return AgentConfig(env=env, **kw)


def rows(env: str, n: int, **task_args: Any) -> list[dict[str, Any]]:
    task = make_task(env, task_args)
    return [task.train_problem(i, seed=0).row() for i in range(n)]


# --------------------------------------------------------------------------- token layout


def test_a_demonstration_trains_exactly_the_experts_turns(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    config = agent("calculator")
    row = rows("calculator", 1)[0]
    episode = demonstration(row, environment_factory(config), Conversation(tok, True), config)
    assert episode.success and episode.turns == 2
    own = [t for t, turn in zip(episode.ids, episode.turn_of, strict=True) if turn >= 0]
    actions = episode.actions()
    expected = tok(actions[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    expected += tok(actions[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert own == expected  # every model token, in order, and nothing else
    # The observation (the tool's result) is in the sequence but not the policy's.
    other = tok.decode([t for t, turn in zip(episode.ids, episode.turn_of, strict=True) if turn < 0])
    assert other == f"<|tool|>{episode.messages[2]['content']}\n<|assistant|>"
    assert tok.decode(episode.prompt_ids) == f"<|user|>{episode.messages[0]['content']}\n<|assistant|>"


def test_rollout_masks_cover_only_the_sampled_tokens(tiny: tuple[Any, Any]) -> None:
    policy, tok = tiny
    config = agent("guess_number", max_turns=3)
    torch.manual_seed(0)
    episodes = run_episodes(policy, tok, rows("guess_number", 2), 2, environment_factory(config), config, SamplingParams(max_new_tokens=4))
    batch, turns = to_batch(episodes, tok.pad_token_id)
    assert batch.loss_mask is not None
    for i, e in enumerate(episodes):
        n = len(e.ids)
        assert batch.completion_mask[i, :n].all() and not batch.completion_mask[i, n:].any()
        own = batch.completion_ids[i][batch.loss_mask[i].bool()].tolist()
        assert own == [t for t, k in zip(e.ids, e.turn_of, strict=True) if k >= 0]
        # the policy's own tokens decode to its actions (EOS dropped), turn by turn
        for k, action in enumerate(e.actions()):
            ids = [t for t, turn in zip(e.ids, e.turn_of, strict=True) if turn == k]
            assert tok.decode(ids, skip_special_tokens=True) == action
        assert int(turns.mask[i].sum()) == e.turns
    assert turns.turn_of.max() < turns.mask.shape[1]


def test_per_token_copies_each_turns_value_to_its_tokens() -> None:
    values = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    turn_of = torch.tensor([[0, 0, -1, 1, -1], [0, -1, -1, -1, -1]])
    assert per_token(values, turn_of).tolist() == [[1.0, 1.0, 0.0, -2.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0]]


def test_turn_tensors_give_equal_states_equal_anchor_ids(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    config = agent("guess_number")
    make = environment_factory(config)
    row = rows("guess_number", 1)[0]
    a = demonstration(row, make, Conversation(tok, True), config)
    b = demonstration(row, make, Conversation(tok, True), config)
    _, turns = to_batch([a, b], tok.pad_token_id)
    assert torch.equal(turns.anchors[0], turns.anchors[1])  # same row, same expert: same states
    assert len(set(turns.anchors[0, : a.turns].tolist())) == a.turns  # each turn a new state


# --------------------------------------------------------------------------- containment


class Crashing(Environment):
    name = "crashing"

    def reset(self, row: dict[str, Any]) -> str:
        return "go"

    def step(self, action: str) -> StepResult:
        raise RuntimeError("boom")

    def state_key(self) -> str:
        return "s"


class Hanging(Crashing):
    release = threading.Event()

    def step(self, action: str) -> StepResult:
        self.release.wait(30)
        return StepResult("late", 1.0, True)


class Wrong(Crashing):
    def step(self, action: str) -> Any:
        return "not a step result"


def test_a_crashing_environment_ends_its_episode_not_the_run(tiny: tuple[Any, Any]) -> None:
    policy, tok = tiny
    config = agent("tests.test_agents:Crashing", max_turns=3, error_reward=-1.0)
    episodes = run_episodes(policy, tok, [{"prompt": "x"}], 2, environment_factory(config), config, SamplingParams(max_new_tokens=2))
    assert all(e.error == "RuntimeError: boom" and e.turns == 1 and e.turn_rewards == [-1.0] for e in episodes)
    config = agent("tests.test_agents:Wrong", max_turns=3)
    episodes = run_episodes(policy, tok, [{"prompt": "x"}], 1, environment_factory(config), config, SamplingParams(max_new_tokens=2))
    assert episodes[0].error == "step returned str, not a StepResult"


def test_a_hanging_environment_times_out_and_the_rollout_goes_on(tiny: tuple[Any, Any]) -> None:
    policy, tok = tiny
    config = agent("tests.test_agents:Hanging", max_turns=3, step_timeout=0.3)
    started = time.monotonic()
    episodes = run_episodes(policy, tok, [{"prompt": "x"}], 3, environment_factory(config), config, SamplingParams(max_new_tokens=2))
    assert time.monotonic() - started < 5
    assert all(e.timed_out and e.error == "timed out after 0.3 s" for e in episodes)
    Hanging.release.set()


def test_call_all_runs_calls_concurrently_and_keeps_their_order() -> None:
    def slow(i: int) -> int:
        time.sleep(0.2)
        return i

    started = time.monotonic()
    out = call_all([lambda i=i: slow(i) for i in range(6)], timeout=5, workers=6)
    assert [o.value for o in out] == list(range(6))
    assert time.monotonic() - started < 0.9  # six 0.2 s calls at once, not one after another


def test_an_unknown_environment_is_one_clear_message() -> None:
    with pytest.raises(ConfigError, match="agent.env: unknown environment 'gridwold' \\(did you mean 'gridworld'\\?\\)"):
        environment_factory(agent("gridwold"))
    with pytest.raises(ConfigError, match="agent.env_args: environment 'guess_number' does not take these args"):
        environment_factory(agent("guess_number", env_args={"size": 3}))


# --------------------------------------------------------------------------- training runs


def _agent_configs(tmp_path: Any, credit: str) -> tuple[Any, Any]:
    from rewardlab.config import RunConfig, SFTConfig

    agent_section = {"env": "guess_number", "max_turns": 5, "credit": {"name": credit}}
    sft = SFTConfig.model_validate(
        {
            "run_dir": str(tmp_path / "sft"),
            "data": {"task": "guess_number", "num_examples": 16, "heldout_size": 4},
            "agent": agent_section,
            "rollout": {"max_new_tokens": 4},
            "train": {"epochs": 2, "batch_size": 8},
            "eval": {"every": 0, "num_samples": 1},
            "logging": {"samples": 1},
        }
    )
    rl = RunConfig.model_validate(
        {
            "run_dir": str(tmp_path / "rl"),
            "model": {"name": str(tmp_path / "sft" / "final")},
            "data": {"task": "guess_number", "heldout_size": 4},
            "agent": agent_section,
            "rollout": {"max_new_tokens": 4, "num_generations": 4},
            "train": {"steps": 2, "prompts_per_step": 2},
            "eval": {"every": 0, "num_samples": 1},
            "checkpoint": {"every": 1},
            "logging": {"samples": 1},
        }
    )
    return sft, rl


@pytest.mark.parametrize("credit", ["gigpo", "spa", "igpo"])
def test_an_agent_run_trains_from_config_and_resumes_exactly(tmp_path: Any, credit: str) -> None:
    import json

    from rewardlab.trainers.online import train
    from rewardlab.trainers.sft import train_sft

    sft, rl = _agent_configs(tmp_path, credit)
    warm = train_sft(sft)
    assert {"eval/success", "eval/success_sampled", "eval/turns"} <= set(warm.last_eval)
    first = train(rl)
    logged = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "agent/success" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["agent/turns"] >= 1 and "grad_norm" in m for m in steps)
    key = {"spa": "agent/progress_loss", "igpo": "agent/info_gain", "gigpo": "agent/anchor_grouped"}[credit]
    assert all(key in m and m[key] == m[key] for m in steps)  # present and not NaN
    transcript = json.loads((first.run_dir / "samples" / "step-000002.jsonl").read_text().splitlines()[-1])
    assert transcript["step"] == 2
    assert transcript["messages"][0] == {"role": "user", "content": "Guess my number, 1-16."}
    # Resume from the step-1 checkpoint: step 2 is replayed exactly (the SPA estimator too).
    import shutil

    shutil.rmtree(first.run_dir / "checkpoints" / "step-000002")
    again = train(rl, resume=first.run_dir)
    relogged = [json.loads(line) for line in (again.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in relogged if m["step"] == 2 and "agent/success" in m][-1]
    for name in ("reward", "agent/turns", "loss", "grad_norm", key):
        assert last[name] == pytest.approx(steps[1][name], rel=1e-5, abs=1e-7), name


def test_rewardlab_eval_of_an_agent_run_folder_plays_the_environment(tmp_path: Any) -> None:
    """``rewardlab eval RUN_DIR`` of an SFT or RL agent run plays the run's held-out episodes
    with its final model (it used to drop the agent section and fail on the environment task),
    and gives the metrics of the run's own evaluation of that model."""
    import subprocess
    import sys

    from rewardlab.trainers.common import run_config_of_folder
    from rewardlab.trainers.online import evaluate_config, train
    from rewardlab.trainers.sft import train_sft

    sft, rl = _agent_configs(tmp_path, "gigpo")
    sft = sft.model_copy(update={"agent": sft.agent.model_copy(update={"demo_noise": 0.3})})
    train_sft(sft)
    trained = train(rl.model_copy(update={"eval": rl.eval.model_copy(update={"num_samples": 2})}))
    for folder in (tmp_path / "sft", tmp_path / "rl"):
        config = run_config_of_folder(folder, [])
        assert config.agent is not None and config.agent.demo_noise == 0.0
        metrics = evaluate_config(config)
        assert {"eval/success", "eval/success_sampled", "eval/turns", "eval/invalid_actions"} <= set(metrics)
    # The RL run's last evaluation is of the same model on the same rows: greedy play agrees.
    assert metrics["eval/success"] == trained.last_eval["eval/success"]
    assert metrics["eval/turns"] == trained.last_eval["eval/turns"]
    done = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "eval", str(tmp_path / "rl"), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["eval/success"] == metrics["eval/success"]


class OneTurnDigits(Environment):
    """A one-turn environment whose reward is the share of digits in the answer (the
    ``dense_rewards:digit_fraction`` reward of the plain run)."""

    def reset(self, row: dict[str, Any]) -> str:
        self.prompt = row["prompt"]
        return row["prompt"]

    def step(self, action: str) -> StepResult:
        from dense_rewards import digit_fraction

        (score,) = digit_fraction([self.prompt], [action])
        return StepResult("", score, True, info={"success": score == 1.0})

    def state_key(self) -> str:
        return self.prompt


def test_a_one_turn_agent_run_is_the_single_turn_trainer(tmp_path: Any) -> None:
    """With one turn, no chat template and the trajectory credit, an agent run must make the
    same rollouts, rewards and updates as the plain GRPO trainer on the same task."""
    import json

    from rewardlab.config import RunConfig
    from rewardlab.trainers.online import train

    base = {
        "data": {"task": "arithmetic", "heldout_size": 8},
        "rollout": {"max_new_tokens": 4, "num_generations": 4},
        "train": {"steps": 3, "prompts_per_step": 4},
        "eval": {"every": 0},
        "logging": {"samples": 0},
        "rewards": [{"name": "dense_rewards:digit_fraction"}],
    }
    plain = train(RunConfig.model_validate(base | {"run_dir": str(tmp_path / "plain")}))
    agent_run = train(
        RunConfig.model_validate(
            base
            | {
                "run_dir": str(tmp_path / "agent"),
                "rewards": [{"name": "task"}],
                "agent": {"env": "tests.test_agents:OneTurnDigits", "max_turns": 1, "chat_template": False},
            }
        )
    )

    def steps(run: Any) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "loss" in r]

    a, b = steps(plain), steps(agent_run)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        for name in ("reward", "loss", "grad_norm", "entropy"):
            assert y[name] == pytest.approx(x[name], rel=1e-5, abs=1e-7), (x["step"], name)
    assert any(x["grad_norm"] > 0 for x in a)  # the comparison covers real updates


# --------------------------------------------------------------------------- imperfect demonstrations


def test_demo_noise_mixes_random_turns_into_the_experts_at_its_rate(tiny: tuple[Any, Any]) -> None:
    import random

    _, tok = tiny
    config = agent("guess_number", max_turns=5, demo_noise=0.5)
    make = environment_factory(config)
    expert_turns = careless = 0
    for i, row in enumerate(rows("guess_number", 60)):
        episode = demonstration(row, make, Conversation(tok, True), config, random.Random(i))
        replay = make()
        replay.reset(row)
        for action in episode.actions():  # each turn is the expert's or a still-possible guess
            expert = replay.expert_action()
            expert_turns += action == expert
            careless += action != expert
            assert replay.step(action).info["valid"] is True
    share = careless / (careless + expert_turns)
    assert 0.25 < share < 0.55  # half the turns are random; a random guess can hit the middle
    clean = agent("guess_number", max_turns=5)
    row = rows("guess_number", 1)[0]
    plain = demonstration(row, make, Conversation(tok, True), clean, random.Random(0))
    assert plain.actions() == demonstration(row, make, Conversation(tok, True), clean).actions()


def test_demo_noise_without_a_random_action_is_one_message(tiny: tuple[Any, Any]) -> None:
    import random

    _, tok = tiny

    class NoRandom(Environment):
        def reset(self, row: dict[str, Any]) -> str:
            return "go"

        def step(self, action: str) -> StepResult:
            return StepResult("", 1.0, True)

        def expert_action(self) -> str:
            return "x"

    config = agent("guess_number", demo_noise=1.0)
    with pytest.raises(ConfigError, match="demo_noise: environment 'guess_number' has no random_action"):
        demonstration({"prompt": "p"}, NoRandom, Conversation(tok, True), config, random.Random(0))


def test_agent_sft_plays_the_expert_on_every_row_of_a_data_file(tmp_path: Any) -> None:
    import json

    from rewardlab.config import SFTConfig
    from rewardlab.trainers.sft import sft_examples

    secrets = [3, 11, 16]
    path = tmp_path / "secrets.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": "Guess my number, 1-16.", "answer": json.dumps({"secret": s, "high": 16})}) + "\n"
        for s in secrets
    ))
    config = SFTConfig.model_validate(
        {"data": {"path": str(path)}, "agent": {"env": "guess_number", "max_turns": 5}, "rollout": {"max_new_tokens": 4}}
    )
    _, tok = load_policy(ModelConfig(), seed=0)
    examples, skipped = sft_examples(config, tok)
    assert skipped == 0 and len(examples) == len(secrets)
    for (ids, labels), secret in zip(examples, secrets, strict=True):
        trained = tok.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
        assert trained.replace(tok.eos_token, " ").split()[-1] == str(secret)  # the expert found it
