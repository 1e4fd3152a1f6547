"""Tests for the built-in agent environments (rewardlab.agents.envs): hand-computed episodes,
invalid actions, the safe calculator, experts, determinism, state keys and the split."""

from __future__ import annotations

import builtins
import json
import random
from fractions import Fraction
from typing import Any

import pytest

import rewardlab.agents.envs  # noqa: F401  (registers the environments)
from rewardlab.agents.env import ENVIRONMENTS, Environment, StepResult
from rewardlab.agents.envs.calculator import (
    MAX_EXPR_LEN,
    CalculatorEnv,
    CalculatorTask,
    ExprError,
    evaluate,
    format_value,
)
from rewardlab.agents.envs.gridworld import GridworldEnv, GridworldTask, parse_move
from rewardlab.agents.envs.guess_number import GuessNumberEnv, GuessNumberTask
from rewardlab.agents.tools import ToolCall
from rewardlab.errors import ConfigError, DataError

NAMES = ["calculator", "guess_number", "gridworld"]
EXPERT_ROWS = 200


def _env(name: str) -> Environment:
    return ENVIRONMENTS[name].factory()


def _step(env: Environment, action: str) -> tuple[str, float, bool, str, bool]:
    r = env.step(action)
    return r.observation, r.reward, r.done, r.role, r.info["valid"]


def _calc(expr: str) -> str:
    return ToolCall("calc", {"expr": expr}).render()


def _play(env: Environment, row: dict[str, Any], actions: list[str]) -> list[Any]:
    """The transcript of a scripted episode (stops at done), as plain comparable values."""
    transcript: list[Any] = [env.reset(row)]
    for action in actions:
        r: StepResult = env.step(action)
        transcript.append(
            (action, r.observation, r.reward, r.done, r.role, r.info, env.state_key())
        )
        if r.done:
            break
    return transcript


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", NAMES)
def test_each_env_is_registered_with_its_task(name: str) -> None:
    spec = ENVIRONMENTS[name]
    env = spec.factory()
    assert isinstance(env, Environment) and env.name == name
    assert spec.task.name == name and spec.description
    assert spec.factory() is not env


@pytest.mark.parametrize("name", NAMES)
def test_env_task_reward_fn_says_to_use_an_agent_section(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"task '{name}' is an environment: .*`agent:`"):
        ENVIRONMENTS[name].task().reward_fn()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "row",
    [{"prompt": "x"}, {"prompt": "x", "answer": "not json"}, {"prompt": "x", "answer": "{}"}],
    ids=["missing", "not-json", "empty-object"],
)
def test_malformed_rows_raise_data_error_naming_field_and_env(name: str, row: dict) -> None:
    with pytest.raises(DataError, match=rf"env '{name}': row field 'answer'"):
        _env(name).reset(row)


@pytest.mark.parametrize("name", NAMES)
def test_step_after_done_is_refused(name: str) -> None:
    env = _env(name)
    env.reset(ENVIRONMENTS[name].task().train_problem(0, seed=0).row())
    for _ in range(env.max_turns_hint):
        if env.step(env.expert_action()).done:
            break
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("1")


# --------------------------------------------------------------------------- calculator

CALC_ROW = {
    "prompt": "Ann has 23 apples and gets 45 more. How many?",
    "answer": '{"expr":"23+45","value":68}',
}


def test_calculator_hand_episode() -> None:
    env = CalculatorEnv()
    assert env.reset(CALC_ROW) == CALC_ROW["prompt"]
    call = '<tool_call>{"name":"calc","arguments":{"expr":"23+45"}}</tool_call>'
    assert _step(env, call) == ("68", 0.0, False, "tool", True)
    result = env.step("68")
    assert (result.observation, result.reward, result.done) == ("", 1.0, True)
    assert result.info["success"] is True


@pytest.mark.parametrize(
    ("answer", "reward"),
    [
        ("68", 1.0),
        (" It is 68. ", 1.0),
        ("68.0", 1.0),
        ("67", 0.0),
        ("6 8", 0.0),
        ("23+45 = 68", 1.0),
        ("68, not 67", 0.0),
        ("many", 0.0),
    ],
)
def test_calculator_final_answer_is_the_last_number(answer: str, reward: float) -> None:
    env = CalculatorEnv()
    env.reset(CALC_ROW)
    result = env.step(answer)
    assert result.done and result.reward == reward and result.info["success"] is (reward == 1.0)


@pytest.mark.parametrize(
    ("action", "observation"),
    [
        ('<tool_call>{"name":"calc","arguments":{"expr":"2*(3+4)"}}</tool_call>', "14"),
        (
            'I will compute. <tool_call>{"name": "calc", "arguments": {"expr": "7/2"}}</tool_call>',
            "3.5",
        ),
        ('{"name":"calc","arguments":{"expr":"100-1"}}', "99"),
        ('  {"name": "calc", "arguments": {"expr": "6*7"}}\n', "42"),
    ],
    ids=["tagged", "tagged-with-text", "bare-json", "bare-json-spaced"],
)
def test_calculator_accepts_tagged_and_bare_json_calls(action: str, observation: str) -> None:
    env = CalculatorEnv()
    env.reset(CALC_ROW)
    assert _step(env, action) == (observation, 0.0, False, "tool", True)


@pytest.mark.parametrize(
    ("action", "observation"),
    [
        (
            '<tool_call>{"name":"sum","arguments":{"expr":"1+1"}}</tool_call>',
            "error: unknown tool 'sum', use 'calc'",
        ),
        (
            '<tool_call>{"name":"calc","arguments":{}}</tool_call>',
            "error: calc takes one string argument 'expr'",
        ),
        (
            '<tool_call>{"name":"calc","arguments":{"expr":5}}</tool_call>',
            "error: calc takes one string argument 'expr'",
        ),
        (
            '<tool_call>{"name":"calc","arguments":{"expr":"1/0"}}</tool_call>',
            "error: division by zero",
        ),
        (
            '<tool_call>{"name":"calc","arguments":{"expr":"2**3"}}</tool_call>',
            "error: ** (power) is not supported",
        ),
        (
            '<tool_call>{"name":"calc","arguments":{"expr":"23+45"}',
            "error: unclosed <tool_call> tag",
        ),
        (
            _calc("1+1") + ToolCall("x").render(),
            "2\nerror: unknown tool 'x', use 'calc'",
        ),
    ],
    ids=[
        "unknown-tool",
        "no-expr",
        "expr-not-string",
        "div-zero",
        "power",
        "unclosed",
        "one-bad-of-two",
    ],
)
def test_calculator_invalid_calls_answer_an_error_and_continue(
    action: str, observation: str
) -> None:
    env = CalculatorEnv()
    env.reset(CALC_ROW)
    assert _step(env, action) == (observation, 0.0, False, "tool", False)
    assert env.step("68").reward == 1.0  # the episode goes on after an invalid call


def test_calculator_broken_json_in_tags_is_an_error_not_an_answer() -> None:
    env = CalculatorEnv()
    env.reset(CALC_ROW)
    observation, reward, done, role, valid = _step(env, "<tool_call>{68}</tool_call>")
    assert observation.startswith("error: bad tool call") and (reward, done, role, valid) == (
        0.0,
        False,
        "tool",
        False,
    )


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("23+45", Fraction(68)),
        (" 2 + 3 * 4 ", Fraction(14)),
        ("(2+3)*4", Fraction(20)),
        ("10-4-3", Fraction(3)),
        ("-3+5", Fraction(2)),
        ("--3", Fraction(3)),
        ("7/2", Fraction(7, 2)),
        ("10/4*2", Fraction(5)),
        ("999999*1000000", Fraction(999999000000)),
    ],
)
def test_safe_evaluator_values(expr: str, value: Fraction) -> None:
    assert evaluate(expr) == value


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os')", "bad character"),
        ("__import__('os').system('true')", "bad character"),
        ("2**99999", "power"),
        ("2^3", "bad character"),
        ("abc", "bad character"),
        ("1e5", "bad character"),
        ("1.5+1", "bad character"),
        ("1+" * 1000 + "1", "longer than"),
        ("9" * (MAX_EXPR_LEN + 1), "longer than"),
        ("999999*999999*999999", "too large"),
        ("1000000000001", "too large"),
        ("1/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3/3", "too large"),
        ("1/0", "division by zero"),
        ("1/(2-2)", "division by zero"),
        ("(1+2", "ends too early"),
        ("1+2)", "unexpected ')'"),
        ("1 2", "unexpected '2'"),
        ("", "empty"),
        ("*3", "unexpected '*'"),
    ],
)
def test_safe_evaluator_rejects(expr: str, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expr)


def test_safe_evaluator_does_not_use_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert evaluate("(12+3)*4-5/5") == 59


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(68), "68"),
        (Fraction(-7, 2), "-3.5"),
        (Fraction(1, 3), "0.333333"),
        (Fraction(2, 3), "0.666667"),
        (Fraction(-1, 10**8), "0"),
    ],
)
def test_calculator_formats_values_as_plain_decimals(value: Fraction, text: str) -> None:
    assert format_value(value) == text


def test_calculator_expert_calls_then_answers() -> None:
    env = CalculatorEnv()
    env.reset(CALC_ROW)
    assert env.expert_action() == _calc("23+45")
    env.step(_calc("1+1"))  # a wrong call: the expert still needs the right value
    assert env.expert_action() == _calc("23+45")
    env.step(env.expert_action())
    assert env.expert_action() == "68"


def test_calculator_task_problems_match_their_answer() -> None:
    task = CalculatorTask(digits=2, ops="+-*")
    ops = set()
    for i in range(300):
        problem = task.train_problem(i, seed=1)
        answer = json.loads(problem.answer)
        assert evaluate(answer["expr"]) == answer["value"] >= 0
        assert len(problem.prompt) <= 60
        ops |= {op for op in "+-*" if op in answer["expr"]}
    assert ops == {"+", "-", "*"}


@pytest.mark.parametrize("args", [{"digits": 0}, {"digits": 7}, {"ops": "/"}, {"ops": ""}])
def test_calculator_task_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="calculator"):
        CalculatorTask(**args)


@pytest.mark.parametrize(
    "answer",
    [
        '{"expr":"23+45","value":69}',
        '{"expr":"23+45"}',
        '{"expr":"2**3","value":8}',
        '{"expr":"1","value":true}',
    ],
    ids=["wrong-value", "no-value", "bad-expr", "bool-value"],
)
def test_calculator_inconsistent_answer_is_a_data_error(answer: str) -> None:
    with pytest.raises(DataError, match="env 'calculator': row field 'answer'"):
        CalculatorEnv().reset({"prompt": "p", "answer": answer})


def test_calculator_state_key_is_problem_plus_tool_results() -> None:
    a, b = CalculatorEnv(), CalculatorEnv()
    assert a.reset(CALC_ROW) and b.reset(CALC_ROW)
    assert a.state_key() == b.state_key()
    a.step(_calc("23+45"))
    assert a.state_key() != b.state_key()
    b.step('{"name":"calc","arguments":{"expr":"45+23"}}')  # another call, same result seen
    assert a.state_key() == b.state_key()
    b.step(_calc("1+1"))
    assert a.state_key() != b.state_key()
    other = CalculatorEnv()
    other.reset(
        {"prompt": "Bo has 23 pens and gets 45 more. How many?", "answer": CALC_ROW["answer"]}
    )
    fresh = CalculatorEnv()
    fresh.reset(CALC_ROW)
    assert other.state_key() != fresh.state_key()


# --------------------------------------------------------------------------- guess_number


def _guess_row(secret: int, high: int = 16) -> dict[str, str]:
    return {
        "prompt": f"Guess my number, 1-{high}.",
        "answer": json.dumps({"secret": secret, "high": high}),
    }


def test_guess_number_hand_episode() -> None:
    env = GuessNumberEnv()
    assert env.reset(_guess_row(11)) == "Guess my number, 1-16."
    assert _step(env, "8") == ("higher", 0.0, False, "user", True)
    assert _step(env, "12") == ("lower", 0.0, False, "user", True)
    assert _step(env, "My guess: 10") == ("higher", 0.0, False, "user", True)
    result = env.step("11")
    assert (result.observation, result.reward, result.done, result.info["success"]) == (
        "",
        1.0,
        True,
        True,
    )


@pytest.mark.parametrize(
    ("action", "observation"),
    [
        ("eleven", "say a number"),
        ("", "say a number"),
        ("17", "1-16 only"),
        ("0", "1-16 only"),
        ("-3", "1-16 only"),
    ],
)
def test_guess_number_invalid_guesses(action: str, observation: str) -> None:
    env = GuessNumberEnv()
    env.reset(_guess_row(11))
    assert _step(env, action) == (observation, 0.0, False, "user", False)


def test_guess_number_expert_is_binary_search_and_hint_is_tight() -> None:
    for high in (2, 5, 16, 100):
        turns = []
        for secret in range(1, high + 1):
            env = GuessNumberEnv()
            env.reset(_guess_row(secret, high))
            for turn in range(1, 100):
                if env.step(env.expert_action()).done:
                    break
            turns.append(turn)
        assert max(turns) == GuessNumberTask(high=high).max_turns_hint == env.max_turns_hint
    env = GuessNumberEnv()
    env.reset(_guess_row(11))
    assert env.expert_action() == "8"
    env.step("8")
    assert env.expert_action() == "12"


def test_guess_number_state_key_is_the_valid_history() -> None:
    a, b = GuessNumberEnv(), GuessNumberEnv()
    a.reset(_guess_row(11))
    b.reset(_guess_row(3))
    assert a.state_key() == b.state_key() == "1-16"
    a.step("8")
    b.step("8")
    assert a.state_key() != b.state_key()  # higher vs lower
    c = GuessNumberEnv()
    c.reset(_guess_row(9))
    c.step("x")  # invalid turns leave the state as it was
    c.step("8")
    assert c.state_key() == a.state_key() == "1-16 8h"
    c.step("12")
    assert c.state_key() == "1-16 8h 12l" != a.state_key()
    other_range = GuessNumberEnv()
    other_range.reset(_guess_row(11, high=20))
    other_range.step("8")
    assert other_range.state_key() != a.state_key()


def test_guess_number_heldout_secrets_are_distinct_and_never_trained() -> None:
    task = GuessNumberTask(high=100, holdout=True)
    heldout = task.heldout(50, seed=0)
    secrets = {json.loads(p.answer)["secret"] for p in heldout}
    assert len(secrets) == len(heldout) == 10
    assert heldout == GuessNumberTask(high=100, holdout=True).heldout(50, seed=0)
    trained = {json.loads(task.train_problem(i, seed=0).answer)["secret"] for i in range(2000)}
    assert not secrets & trained and len(trained) == 90
    assert len(GuessNumberTask(high=16, holdout=True).heldout(5, seed=0)) == 1


def test_guess_number_without_holdout_evaluates_every_secret_once() -> None:
    task = GuessNumberTask(high=16)
    secrets = [json.loads(p.answer)["secret"] for p in task.heldout(200, seed=0)]
    assert sorted(secrets) == list(range(1, 17))
    trained = {json.loads(task.train_problem(i, seed=0).answer)["secret"] for i in range(500)}
    assert trained == set(range(1, 17))


@pytest.mark.parametrize("args", [{"high": 1}, {"high": 0}, {"high": True}, {"high": 10**7}])
def test_guess_number_task_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="guess_number: high"):
        GuessNumberTask(**args)


def test_guess_number_secret_out_of_range_is_a_data_error() -> None:
    with pytest.raises(DataError, match="secret 17 is not in 1..16"):
        GuessNumberEnv().reset(_guess_row(17))


# --------------------------------------------------------------------------- gridworld


def _grid_row(grid: str) -> dict[str, str]:
    return {"prompt": "", "answer": json.dumps({"grid": grid})}


def test_gridworld_hand_episode() -> None:
    env = GridworldEnv()
    assert env.reset(_grid_row("A.#/.../..G")) == "Reach G. up/down/left/right\nA.#\n...\n..G"
    assert _step(env, "left") == ("blocked\nA.#\n...\n..G", 0.0, False, "user", False)
    assert _step(env, "right") == (".A#\n...\n..G", 0.0, False, "user", True)
    assert _step(env, "right") == ("blocked\n.A#\n...\n..G", 0.0, False, "user", False)
    assert _step(env, "Down.") == ("..#\n.A.\n..G", 0.0, False, "user", True)
    assert _step(env, " MOVE: Right ") == ("..#\n..A\n..G", 0.0, False, "user", True)
    result = env.step("down")
    assert (result.observation, result.reward, result.done, result.info["success"]) == (
        "",
        1.0,
        True,
        True,
    )


@pytest.mark.parametrize("action", ["jump", "", "up or left", "upward", "north"])
def test_gridworld_unknown_actions_leave_the_state(action: str) -> None:
    env = GridworldEnv()
    env.reset(_grid_row("A.#/.../..G"))
    assert _step(env, action) == (
        "say up, down, left or right\nA.#\n...\n..G",
        0.0,
        False,
        "user",
        False,
    )
    assert env.state_key() == "A.#\n...\n..G"


@pytest.mark.parametrize(
    ("action", "move"), [("UP", "up"), ("up up", "up"), ("go left!", "left"), ("rightly", None)]
)
def test_gridworld_parse_move(action: str, move: str | None) -> None:
    assert parse_move(action) == move


def test_gridworld_expert_takes_a_shortest_path_around_walls() -> None:
    env = GridworldEnv()
    # A must go around the wall column: down twice, right twice, up twice (6 moves).
    env.reset(_grid_row("A#G/.#./..."))
    moves = []
    while True:
        moves.append(env.expert_action())
        if env.step(moves[-1]).done:
            break
    assert moves == ["down", "down", "right", "right", "up", "up"]


@pytest.mark.parametrize(
    ("grid", "why"),
    [
        ("A#G/##./...", "solvable"),
        ("A./..G", "rectangular"),
        ("AA/.G", "one 'A'"),
        ("A./..", "one 'G'"),
        ("A.x/..G", "only"),
    ],
)
def test_gridworld_bad_grids_are_data_errors(grid: str, why: str) -> None:
    with pytest.raises(DataError, match=rf"env 'gridworld': row field 'answer'.*{why}"):
        GridworldEnv().reset(_grid_row(grid))


def test_gridworld_layouts_repeat_and_are_solvable() -> None:
    task = GridworldTask()
    rows = [task.train_problem(i, seed=0) for i in range(EXPERT_ROWS)]
    wall_maps = {p.prompt.replace("A", ".").replace("G", ".") for p in rows}
    assert 1 < len(wall_maps) <= len(task.maps) == 4
    assert all(p.prompt.count("#") == 2 for p in rows)
    assert task.max_turns_hint == GridworldEnv.max_turns_hint == 6
    assert GridworldTask(size=3, walls=0).max_turns_hint == 4


def test_gridworld_state_key_is_the_grid() -> None:
    a, b = GridworldEnv(), GridworldEnv()
    a.reset(_grid_row("A../.../..G"))
    b.reset(_grid_row("A../.../..G"))
    a.step("right")
    a.step("down")
    b.step("down")
    assert a.state_key() != b.state_key()
    b.step("right")
    assert a.state_key() == b.state_key() == "...\n.A.\n..G"
    c = GridworldEnv()
    c.reset(_grid_row(".../.A./G.."))  # same agent cell, another goal
    assert c.state_key() != a.state_key()


@pytest.mark.parametrize(
    "args", [{"size": 1}, {"size": 10}, {"walls": 15}, {"maps": 0}, {"size": 9, "walls": 60}]
)
def test_gridworld_task_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="gridworld"):
        GridworldTask(**args)


# --------------------------------------------------------------------------- all environments


@pytest.mark.parametrize("name", NAMES)
def test_expert_solves_every_train_row_within_the_hint(name: str) -> None:
    spec = ENVIRONMENTS[name]
    task = spec.task()
    assert type(spec.factory()).max_turns_hint == task.max_turns_hint
    for i in range(EXPERT_ROWS):
        env = spec.factory()
        env.reset(task.train_problem(i, seed=0).row())
        result = None
        for _ in range(task.max_turns_hint):
            result = env.step(env.expert_action())
            assert result.info["valid"] is True
            if result.done:
                break
        assert result is not None and result.done and result.reward == 1.0, f"row {i}"
        assert result.info["success"] is True


@pytest.mark.parametrize("name", NAMES)
def test_same_row_same_episode(name: str) -> None:
    task = ENVIRONMENTS[name].task()
    junk = ["7", "up", "hello", _calc("3*3"), "{", "left", "9"]
    for i in range(20):
        row = task.train_problem(i, seed=5).row()
        assert row == ENVIRONMENTS[name].task().train_problem(i, seed=5).row()
        rng = random.Random(i)
        env = _env(name)
        env.reset(row)
        actions = []
        for _ in range(8):  # a mixed episode: expert moves and junk, decided up front
            actions.append(env.expert_action() if rng.random() < 0.6 else rng.choice(junk))
            if env.step(actions[-1]).done:
                break
        first = _play(_env(name), row, actions)
        assert first == _play(_env(name), row, actions)
        assert first[1:] and first[-1][0] == actions[-1]


@pytest.mark.parametrize("name", NAMES)
def test_state_key_changes_with_every_valid_non_final_turn(name: str) -> None:
    task = ENVIRONMENTS[name].task()
    for i in range(50):
        env = _env(name)
        env.reset(task.train_problem(i, seed=2).row())
        keys = [env.state_key()]
        while True:
            result = env.step(env.expert_action())
            if result.done:
                break
            keys.append(env.state_key())
        assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", NAMES)
def test_heldout_rows_never_appear_in_training(name: str) -> None:
    task = ENVIRONMENTS[name].task(**({"holdout": True} if name == "guess_number" else {}))
    heldout = task.heldout(20, seed=0)
    assert heldout and all(task.is_heldout(p) for p in heldout)
    train = [task.train_problem(i, seed=s) for s in (0, 1) for i in range(500)]
    assert not any(task.is_heldout(p) for p in train)
    assert not {(p.prompt, p.answer) for p in heldout} & {(p.prompt, p.answer) for p in train}


@pytest.mark.parametrize("name", NAMES)
def test_random_actions_are_valid_and_vary(name: str) -> None:
    """A careless demonstrator's turns are executable moves that differ from the expert's."""
    task = ENVIRONMENTS[name].task()
    rng = random.Random(0)
    differs = 0
    for i in range(40):
        env = _env(name)
        env.reset(task.train_problem(i, seed=3).row())
        action = env.random_action(rng)
        differs += action != env.expert_action()
        assert env.step(action).info["valid"] is True, f"row {i}: {action!r}"
    assert differs >= 10


def test_guess_number_random_action_stays_within_the_feedback() -> None:
    env = GuessNumberEnv()
    env.reset({"answer": json.dumps({"secret": 11, "high": 16})})
    env.step("8")  # higher: 9..16
    env.step("13")  # lower: 9..12
    rng = random.Random(0)
    assert {int(env.random_action(rng)) for _ in range(200)} == {9, 10, 11, 12}


def test_calculator_random_action_answers_an_operand_without_the_tool() -> None:
    env = CalculatorEnv()
    env.reset({"prompt": "Ann has 23 apples and gets 45 more.", "answer": '{"expr":"23+45","value":68}'})
    rng = random.Random(0)
    assert {env.random_action(rng) for _ in range(50)} == {"23", "45"}
    result = env.step("45")  # a final answer: the episode ends unsolved
    assert result.done and result.reward == 0.0 and result.info["success"] is False
