"""Preference functions (judges) and the SPO win-rate reward (Swamy et al., arXiv 2401.04056):
hand-computed probabilities, an intransitive judge, one judge call per unordered pair, clear
messages for bad judges and bad config, and spo inside the trainer's scoring path and a run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import judges
import pytest
import torch
from test_trainers import _rl_config, _train_metrics

from rewardlab.config import JudgeConfig, RewardSpec
from rewardlab.errors import ConfigError, RewardlabError
from rewardlab.rewards import (
    REWARD_FACTORIES,
    RewardSource,
    build_preference_fn,
    build_reward_sources,
    drain_failure_counts,
    group_win_matrix,
    win_rates,
)
from rewardlab.rewards.preference_fn import prompt_win_rates
from rewardlab.trainers.online import score, train

TESTS = Path(__file__).parent
RPS = "judges:rock_paper_scissors"


@pytest.fixture(autouse=True)
def _judges_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    judges.CALLS.clear()


def _length_source(weight: float = 1.0, seen: list[list[str]] | None = None) -> RewardSource:
    """A reward of len(completion); records each call's completions in ``seen``."""

    def length(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        if seen is not None:
            seen.append(list(completions))
        return [float(len(c)) for c in completions]

    return RewardSource("length", weight, length)


def _judge(**fields: Any) -> Any:
    return build_preference_fn(JudgeConfig(**fields), [], "judge")


# --------------------------------------------------------------------------- reward comparison


def test_temperature_zero_gives_hard_labels_with_ties_at_one_half() -> None:
    pref = build_preference_fn(JudgeConfig(), [_length_source()], "judge")
    p = pref.probs(["q"] * 3, ["aa", "a", "ab"], ["a", "aa", "cd"], {})
    assert p.tolist() == [1.0, 0.0, 0.5]
    assert p.dtype == torch.float32


def test_a_positive_temperature_gives_the_bradley_terry_probability() -> None:
    # Combined reward: 0.5 * len + 2 * (1 if it has a digit); sigmoid((r_a - r_b) / 2).
    def has_digit(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [float(any(ch.isdigit() for ch in text)) for text in completions]

    digit = RewardSource("digit", 2.0, has_digit)
    pref = build_preference_fn(JudgeConfig(temperature=2.0), [_length_source(0.5), digit], "judge")
    p = pref.probs(["q", "q"], ["aaaa", "a1"], ["a", "bbbb"], {})
    r_a = [0.5 * 4, 0.5 * 2 + 2.0]
    r_b = [0.5 * 1, 0.5 * 4]
    expected = [1 / (1 + math.exp(-(ra - rb) / 2.0)) for ra, rb in zip(r_a, r_b)]
    assert p.tolist() == pytest.approx(expected, abs=1e-6)


def test_each_distinct_completion_is_scored_once_not_once_per_pair() -> None:
    seen: list[list[str]] = []
    pref = build_preference_fn(JudgeConfig(), [_length_source(seen=seen)], "judge")
    completions = ["a", "bb", "ccc", "dddd"] * 2  # two prompts, the same four texts each
    prompts = ["p"] * 4 + ["q"] * 4
    matrix = group_win_matrix(pref, prompts, completions, 4, {})
    assert len(seen) == 1 and len(seen[0]) == 8  # 12 pairs, 8 distinct (prompt, completion)
    assert win_rates(matrix).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0] * 2)


def test_the_same_text_with_different_columns_is_scored_separately() -> None:
    (source,) = build_reward_sources([RewardSpec(name="exact_match")], None)
    pref = build_preference_fn(JudgeConfig(), [source], "judge")
    p = pref.probs(["q", "q"], ["4", "4"], ["5", "5"], {"answer": ["4", "5"]})
    assert p.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- win matrix


def test_rock_paper_scissors_is_intransitive_every_move_wins_half() -> None:
    pref = _judge(function=RPS)
    matrix = group_win_matrix(pref, ["g"] * 3, ["rock", "paper", "scissors"], 3, {})
    assert matrix[0].tolist() == [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
    assert win_rates(matrix).tolist() == [0.5, 0.5, 0.5]
    pair = group_win_matrix(pref, ["h"] * 2, ["paper", "rock"], 2, {})
    assert win_rates(pair).tolist() == [1.0, 0.0]


def test_the_matrix_is_complementary_with_one_half_on_the_diagonal() -> None:
    pref = build_preference_fn(JudgeConfig(temperature=1.5), [_length_source()], "judge")
    completions = ["a", "abc", "ab", "abcdef", "x", "xyz", "", "xy"]
    matrix = group_win_matrix(pref, ["p"] * 4 + ["q"] * 4, completions, 4, {})
    assert matrix.shape == (2, 4, 4)
    assert torch.allclose(matrix + matrix.transpose(1, 2), torch.ones(2, 4, 4))
    assert matrix.diagonal(dim1=1, dim2=2).eq(0.5).all()
    rates = win_rates(matrix).view(2, 4)
    assert torch.allclose(rates.mean(1), torch.full((2,), 0.5))  # wins and losses cancel


def test_the_judge_is_called_once_for_all_unordered_pairs() -> None:
    pref = _judge(function=RPS)
    moves = ["rock", "paper", "scissors", "rock"]
    group_win_matrix(pref, ["p"] * 4 + ["q"] * 4, moves * 2, 4, {})
    assert judges.CALLS == [2 * 6]  # one call, C(4, 2) rows per prompt


def test_groups_of_one_win_half_and_ask_the_judge_nothing() -> None:
    pref = _judge(function=RPS)
    matrix = group_win_matrix(pref, ["p", "q"], ["rock", "paper"], 1, {})
    assert win_rates(matrix).tolist() == [0.5, 0.5] and judges.CALLS == []


def test_groups_by_prompt_text_match_the_adjacent_layout_wherever_rows_are() -> None:
    pref = _judge(function=RPS)
    moves = ["rock", "paper", "scissors", "paper", "rock", "rock"]
    adjacent = win_rates(group_win_matrix(pref, ["p"] * 3 + ["q"] * 3, moves, 3, {}))
    order = [3, 0, 4, 1, 5, 2]  # interleave the two prompts' rows
    shuffled = prompt_win_rates(
        pref, [(["p"] * 3 + ["q"] * 3)[k] for k in order], [moves[k] for k in order], {}
    )
    assert shuffled.tolist() == adjacent[order].tolist()
    single = prompt_win_rates(pref, ["p", "alone", "p"], ["rock", "paper", "scissors"], {})
    assert single.tolist() == [1.0, 0.5, 0.0]


# --------------------------------------------------------------------------- bad judges


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("wrong_length", "returned 4 probabilities for 3 rows"),
        ("too_big", "returned 1.5 for row 1"),
        ("nan", "returned nan for row 1"),
        ("bool", "returned True for row 1"),
        ("text", "returned '0.5' for row 1"),
        ("raises", "raised ValueError: cannot judge this one"),
    ],
)
def test_a_bad_judge_return_names_the_judge_and_the_row(mode: str, expected: str) -> None:
    pref = _judge(function="judges:misbehaving", args={"mode": mode})
    with pytest.raises(RewardlabError) as info:
        pref.probs(["p"] * 3, ["x", "bad", "y"], ["u", "v", "w"], {})
    message = str(info.value)
    assert "judge 'judges:misbehaving'" in message and expected in message, message
    if mode != "wrong_length":
        assert "row 1 (prompt 'p', completion a 'bad', completion b 'v')" in message, message


def test_a_judge_arg_named_like_a_column_is_an_error() -> None:
    pref = _judge(function="judges:misbehaving", args={"mode": "ok"})
    with pytest.raises(RewardlabError, match="arg 'mode' has the same name as a dataset column"):
        pref.probs(["p"], ["a"], ["b"], {"mode": ["x"]})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"function": "no_such_module_xyz:f"}, "judge.function: cannot import module"),
        ({"function": "judges:rock_paper_scisors"}, "(did you mean 'rock_paper_scissors'?)"),
        ({"function": "judges:not_callable"}, "a judge must be callable as fn(prompts, comp"),
        ({"function": "not a name"}, "judge.function: 'not a name' is not of the form"),
        ({"function": "judges:strict_args", "args": {"marginn": 0.1}}, "judge.args.marginn: "),
        ({"function": RPS, "temperature": 0.5}, "judge.temperature: applies only when"),
        ({"args": {"x": 1}}, "judge.args: args are passed to a judge function"),
        ({}, "judge.function: with no judge function the judge compares rewards"),
    ],
)
def test_a_bad_judge_config_names_the_key(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_preference_fn(JudgeConfig(**fields), [], "judge")
    assert expected in str(info.value), str(info.value)


def test_judge_args_are_bound() -> None:
    pref = _judge(function="judges:strict_args", args={"margin": 0.25})
    assert pref.probs(["p"], ["a"], ["b"], {}).tolist() == [0.75]


# --------------------------------------------------------------------------- the spo reward


def _spo(args: dict[str, Any]) -> RewardSource:
    """spo as the second rewards entry, so messages must say rewards[1]."""
    specs = [RewardSpec(name="exact_match"), RewardSpec(name="spo", args=args)]
    return build_reward_sources(specs, None)[1]


def test_spo_is_a_registered_builtin() -> None:
    assert "spo" in REWARD_FACTORIES
    assert "2401.04056" in (REWARD_FACTORIES["spo"].__doc__ or "")


def test_spo_with_a_judge_function_in_the_trainers_scoring_path() -> None:
    sources = build_reward_sources([RewardSpec(name="spo", args={"function": RPS})], None)
    rows = [{"prompt": "one"}, {"prompt": "two"}]
    completions = ["rock", "paper", "scissors", "paper", "rock", "rock"]
    batch = SimpleNamespace(scores=None, rewards=None)
    scores = score(batch, rows, completions, sources, 3)  # type: ignore[arg-type]
    assert scores["spo"].tolist() == [0.5, 0.5, 0.5, 1.0, 0.25, 0.25]
    assert batch.rewards.tolist() == scores["spo"].tolist()
    assert judges.CALLS == [6]  # both prompts' 3 pairs in one call


def test_spo_comparing_exact_match_hard_and_bradley_terry() -> None:
    rows = [{"prompt": "q1", "answer": "4"}, {"prompt": "q2", "answer": "7"}]
    completions = ["4", "5", " 4 ", "7", "x", "y"]
    hard_args = {"reward": {"name": "exact_match"}}
    hard = build_reward_sources([RewardSpec(name="spo", args=hard_args)], None)
    scores = score(SimpleNamespace(scores=None), rows, completions, hard, 3)  # type: ignore[arg-type]
    assert scores["spo"].tolist() == [0.75, 0.0, 0.75, 1.0, 0.25, 0.25]
    soft_args = {"reward": {"name": "exact_match"}, "temperature": 0.5}
    soft = build_reward_sources([RewardSpec(name="spo", args=soft_args)], None)
    scores = score(SimpleNamespace(scores=None), rows, completions, soft, 3)  # type: ignore[arg-type]
    win = 1 / (1 + math.exp(-2.0))  # sigmoid((1 - 0) / 0.5)
    right = (win + 0.5) / 2  # a right answer: beats the wrong one, ties the other right one
    wrong = (1 - win + 0.5) / 2  # a wrong answer: loses to the right one, ties the other
    expected = [right, 1 - win, right, win, wrong, wrong]
    assert scores["spo"].tolist() == pytest.approx(expected, abs=1e-6)


def test_spo_passes_the_compared_rewards_hooks_on() -> None:
    source = _spo({"reward": {"name": "novelty_ngram"}})
    assert callable(getattr(source.fn, "observe", None))
    assert callable(getattr(source.fn, "state_dict", None))


def test_a_judge_error_inside_spo_reaches_the_user() -> None:
    source = _spo({"function": "judges:misbehaving", "args": {"mode": "too_big"}})
    rows = [{"prompt": "p"}]
    with pytest.raises(RewardlabError, match=r"judge 'judges:misbehaving' returned 1\.5 for row 0"):
        score(SimpleNamespace(scores=None), rows, ["bad", "ok"], [source], 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ": reward 'spo' needs a judge: arg 'function'"),
        ({"tempreature": 1}, ".tempreature: reward 'spo' has no arg 'tempreature'"),
        ({"reward": {"name": "exact_match"}, "temperature": -1}, ": 'temperature': Input should"),
        ({"reward": {"name": "task"}}, ": 'reward.name': the 'task' reward is not available"),
        ({"reward": {"name": "exact_mach"}}, ": 'reward.name': unknown reward 'exact_mach'"),
        ({"reward": {"name": "exact_match", "args": {"colum": "a"}}}, ": 'reward.args.colum': "),
        ({"reward": {"name": "exact_match", "args": {"column": ""}}}, ": 'reward.args': reward "),
        ({"reward": {"nme": "exact_match"}}, ": 'reward.name' is required"),
        ({"reward": {"name": "x:y", "transforms": [{"name": "normalize"}]}}, ": 'reward.transf"),
        ({"function": RPS, "reward": {"name": "exact_match"}}, ": 'reward': give either function"),
        ({"function": RPS, "temperature": 0.5}, ": 'temperature': applies only when the judge"),
        ({"function": "judges:strict_args", "args": {"marginn": 1}}, ": 'args.marginn': function"),
        ({"function": "judges:nope"}, ": 'function': module 'judges' has no attribute 'nope'"),
        ({"function": 3}, ": 'function': Input should be a valid string"),
    ],
)
def test_bad_spo_args_name_the_key(args: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _spo(args)
    message = str(info.value)
    # The loader says where (rewards[1].args); spo names its own key after reward 'spo'.
    assert message.startswith("rewards[1].args") and expected in message, message
    if not expected.startswith("."):
        assert message.startswith("rewards[1].args: reward 'spo'"), message


# --------------------------------------------------------------------------- a short run


def test_a_grpo_run_trains_on_the_spo_reward(tmp_path: Path) -> None:
    config = _rl_config(tmp_path / "run", **{
        "rewards": [{"name": "spo", "args": {"function": "judges:more_digits"}}],
        "algorithm.advantage": {"name": "grpo"},
        "train.steps": 2,
        "eval.pass_k": 1,
        "logging.samples": 0,
    })
    train(config)
    steps = [m for m in _train_metrics(tmp_path / "run") if "loss" in m]
    assert len(steps) == 2
    # In every group the win rates average exactly 1/2 (P_ij + P_ji = 1), so the batch does too.
    assert all(m["reward/spo"] == pytest.approx(0.5, abs=1e-6) for m in steps)


def test_spo_reports_the_compared_rewards_fallback_rows() -> None:
    source = _spo({"reward": {"name": "judges:flaky_reward", "on_error": "fallback"}})
    rows = [{"prompt": "p", "answer": "a"}]
    scores = score(SimpleNamespace(scores=None), rows, ["?", "a"], [source], 2)  # type: ignore[arg-type]
    assert scores["spo"].tolist() == [0.0, 1.0]  # the NaN row fell back to 0
    assert drain_failure_counts([source]) == {"failures/spo/not_finite": 1.0}
