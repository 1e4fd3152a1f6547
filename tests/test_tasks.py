"""Tests for rewardlab.data.tasks: determinism, the held-out split, answers, the verifier."""

from __future__ import annotations

import re
from typing import Any

import pytest

from rewardlab.data.tasks import TASKS, Problem, Task, make_task
from rewardlab.data.tasks.builtin import SortTask
from rewardlab.errors import ConfigError
from rewardlab.rewards import RewardFn

TRAIN_CHECKED = 2000


def _task(name: str, **args: Any) -> Task:
    return make_task(name, args)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_stream_is_a_pure_function_of_seed_stream_and_index(name: str) -> None:
    first = [_task(name).train_problem(i, seed=3) for i in range(50)]
    again = [_task(name).train_problem(i, seed=3) for i in reversed(range(50))][::-1]
    assert first == again
    other_seed = [_task(name).train_problem(i, seed=4) for i in range(50)]
    other_stream = [_task(name).train_problem(i, seed=3, stream="sft") for i in range(50)]
    assert first != other_seed and first != other_stream


@pytest.mark.parametrize("name", sorted(TASKS))
def test_heldout_set_is_deterministic_distinct_and_held_out(name: str) -> None:
    task = _task(name)
    heldout = task.heldout(100, seed=0)
    assert heldout == _task(name).heldout(100, seed=0)
    assert len(heldout) == 100 and len({p.prompt for p in heldout}) == 100
    assert all(task.is_heldout(p) for p in heldout)


@pytest.mark.parametrize(
    ("name", "args"),
    [("arithmetic", {}), ("arithmetic", {"digits": 1, "ops": "+-*"}), ("reverse", {}),
     ("sort", {"max_len": 3})],
)
def test_heldout_problems_never_appear_in_training(name: str, args: dict[str, Any]) -> None:
    task = _task(name, **args)
    heldout = {p.prompt for p in task.heldout(500, seed=0)}
    for seed, stream in [(0, "rl"), (1, "sft")]:
        train = [task.train_problem(i, seed=seed, stream=stream) for i in range(TRAIN_CHECKED)]
        assert not any(task.is_heldout(p) for p in train)
        assert heldout.isdisjoint(p.prompt for p in train)


def test_small_spaces_still_have_both_splits() -> None:
    # 1-digit arithmetic has only 300 prompts; the split must leave problems on both sides.
    task = _task("arithmetic", digits=1, ops="+-*")
    assert 0 < len(task.heldout(400, seed=0)) < 300


def _arithmetic_value(prompt: str) -> int:
    match = re.fullmatch(r"(\d+)([+\-*])(\d+)=", prompt)
    assert match, prompt
    a, op, b = int(match[1]), match[2], int(match[3])
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_arithmetic_answers_and_operand_sizes() -> None:
    task = _task("arithmetic", digits=3, min_digits=2, ops="+-*")
    problems = [task.train_problem(i, seed=0) for i in range(500)]
    for p in problems:
        assert p.answer == str(_arithmetic_value(p.prompt))
        assert all(2 <= len(operand) <= 3 for operand in re.findall(r"\d+", p.prompt))
    assert {re.search(r"[+\-*]", p.prompt)[0] for p in problems} == {"+", "-", "*"}
    assert any(p.answer.startswith("-") for p in problems)


def test_reverse_answers_and_lengths() -> None:
    task = _task("reverse", min_len=3, max_len=4)
    for i in range(300):
        p = task.train_problem(i, seed=0)
        word = re.fullmatch(r"reverse:([a-z]{3,4})=", p.prompt)
        assert word and p.answer == word[1][::-1]


def test_sort_answers_and_lengths() -> None:
    task = _task("sort", min_len=1, max_len=5)
    for i in range(300):
        p = task.train_problem(i, seed=0)
        digits = re.fullmatch(r"sort:(\d{1,5})=", p.prompt)
        assert digits and p.answer == "".join(sorted(digits[1]))


def test_problem_row_has_prompt_answer_and_demo() -> None:
    assert Problem("1+2=", "3").row() == {"prompt": "1+2=", "answer": "3"}
    assert Problem("1+2=", "3").demonstration() == {"prompt": "1+2=", "completion": "3"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reward_fn_accepts_the_answer_up_to_whitespace(name: str) -> None:
    task = _task(name)
    problems = [task.train_problem(i, seed=0) for i in range(20)]
    verify = task.reward_fn()
    prompts = [p.prompt for p in problems]
    answers = [p.answer for p in problems]
    assert verify(prompts, [f" {a}\n" for a in answers], answer=answers) == [1.0] * 20
    assert verify(prompts, [a + "0" for a in answers], answer=answers) == [0.0] * 20


def test_reward_fn_is_overridable_per_task() -> None:
    class Lenient(SortTask):
        def reward_fn(self) -> RewardFn:
            return lambda prompts, completions, **columns: [1.0] * len(completions)

    assert Lenient().reward_fn()(["p"], ["wrong"], answer=["right"]) == [1.0]


@pytest.mark.parametrize(
    ("name", "args", "detail"),
    [
        ("arithmetic", {"digitz": 3}, "digitz"),
        ("arithmetic", {"ops": "/"}, "ops"),
        ("arithmetic", {"digits": 2, "min_digits": 3}, "min_digits"),
        ("reverse", {"min_len": 0}, "min_len"),
        ("sort", {"max_len": 1, "min_len": 2}, "max_len"),
    ],
)
def test_bad_task_args_name_data_task_args(name: str, args: dict[str, Any], detail: str) -> None:
    with pytest.raises(ConfigError, match=r"^data\.task_args[.:]") as excinfo:
        make_task(name, args)
    assert detail in str(excinfo.value)


def test_unknown_task_arg_suggests_the_close_one_and_lists_args() -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_task("arithmetic", {"digitz": 3})
    message = str(excinfo.value)
    assert message.startswith("data.task_args.digitz: task 'arithmetic' has no arg 'digitz'")
    assert "(did you mean 'digits'?)" in message and "min_digits (default 1)" in message


def test_unknown_task_names_data_task() -> None:
    with pytest.raises(ConfigError, match=r"^data\.task: unknown task 'arithmetik'") as excinfo:
        make_task("arithmetik", {})
    assert "did you mean 'arithmetic'?" in str(excinfo.value)
