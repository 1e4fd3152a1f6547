"""Tests for rewardlab.rewards: built-in rewards, building sources from specs, scoring, combine."""

from __future__ import annotations

import math
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rewardlab.config import RewardSpec
from rewardlab.data.tasks import make_task
from rewardlab.errors import ConfigError, DataError, RewardlabError
from rewardlab.rewards import (
    REWARD_FACTORIES,
    RewardSource,
    build_reward_sources,
    combine_rewards,
    drain_failure_counts,
    reward_metrics,
    score_completions,
)

NAN = math.nan


def _one(name: str, **args: Any) -> RewardSource:
    (source,) = build_reward_sources([RewardSpec(name=name, args=args)], task=None)
    return source


def _score(source: RewardSource, completions: list[str], **columns: list[Any]) -> list[float]:
    prompts = ["p"] * len(completions)
    return score_completions([source], prompts, completions, columns)[source.name].tolist()


def _same(got: list[float], want: list[float]) -> bool:
    """Elementwise equality where NaN equals NaN (floats compared to 1e-6)."""
    return len(got) == len(want) and all(
        (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, abs_tol=1e-6)
        for g, w in zip(got, want, strict=True)
    )


def _fn(result: Any) -> Callable[..., Any]:
    def reward(prompts: list[str], completions: list[str], **columns: Any) -> Any:
        return result

    return reward


@pytest.fixture
def user_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], None]]:
    """Write a module into tmp_path, importable by name; forgotten again after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, source: str) -> None:
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        parts = name.split(".")
        names.extend(".".join(parts[: i + 1]) for i in range(len(parts)))

    yield write
    for name in names:
        sys.modules.pop(name, None)


# ----------------------------------------------------------------------- built-in rewards


def test_registry_lists_the_built_ins() -> None:
    assert {"exact_match", "math_verify", "regex_format", "length_penalty"} <= set(REWARD_FACTORIES)
    # the rule sources of the rewards issue (tests/test_reward_rules.py tests each)
    assert {
        "numeric", "multiple_choice", "format", "length", "cosine_length", "repetition", "overlong",
        "tool_call", "bleu", "code_exec",
    } <= set(REWARD_FACTORIES)


def test_exact_match_strips_and_skips_missing_references() -> None:
    source = _one("exact_match")
    got = _score(source, ["42", " 42\n", "41", "x"], answer=["42", "42", "42", None])
    assert _same(got, [1.0, 1.0, 0.0, NAN])


def test_exact_match_args_column_and_strip() -> None:
    source = _one("exact_match", column="target", strip=False)
    got = _score(source, ["7", " 7", "7"], target=[7, 7, "7 "])
    # the reference is compared as a string, so the int 7 matches "7"
    assert got == [1.0, 0.0, 0.0]


def test_exact_match_missing_column_is_a_data_error_naming_it() -> None:
    with pytest.raises(DataError, match="reads column 'answer'.*columns: gold"):
        _score(_one("exact_match"), ["1"], gold=["1"])


def test_math_verify_compares_values_not_strings() -> None:
    source = _one("math_verify")
    completions = [r"so the answer is \boxed{\frac{1}{2}}", "1/2", "1/3", "no answer here", "4"]
    got = _score(source, completions, answer=["0.5", "0.5", "0.5", "2", None])
    assert _same(got, [1.0, 1.0, 0.0, 0.0, NAN])
    assert source.fn.failures["no_answer"] == 1


def test_regex_format_search_full_match_and_dotall() -> None:
    completions = ["<think>a\nb</think> 5", "x <think>a</think>", "no tags"]
    search = _one("regex_format", pattern=r"<think>.*</think>")
    assert _score(search, completions) == [1.0, 1.0, 0.0]
    full = _one("regex_format", pattern=r"<think>.*</think>.*", full_match=True)
    assert _score(full, completions) == [1.0, 0.0, 0.0]


def test_length_penalty_at_and_past_the_limit() -> None:
    source = _one("length_penalty", max_chars=4, coef=0.5)
    got = _score(source, ["", "abcd", "abcde", "abcdef", "a" * 8, "a" * 20])
    # over/max_chars = 1/4, 2/4, then capped at 1 from twice the limit on
    assert _same(got, [0.0, 0.0, -0.125, -0.25, -0.5, -0.5])


def test_task_reward_is_the_tasks_verifier() -> None:
    task = make_task("arithmetic", {})
    (source,) = build_reward_sources([RewardSpec(name="task")], task)
    got = score_completions([source], ["1+2="] * 3, [" 3\n", "4", "3 3"], {"answer": ["3"] * 3})
    assert source.name == "task" and got["task"].tolist() == [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------- building sources


def test_duplicate_names_get_a_suffix_and_keep_their_weights() -> None:
    specs = [
        RewardSpec(name="exact_match"),
        RewardSpec(name="exact_match", weight=0.5, args={"strip": False}),
        RewardSpec(name="length_penalty", args={"max_chars": 3}),
        RewardSpec(name="exact_match", weight=-1.0),
    ]
    sources = build_reward_sources(specs, task=None)
    assert [(s.name, s.weight) for s in sources] == [
        ("exact_match", 1.0),
        ("exact_match_2", 0.5),
        ("length_penalty", 1.0),
        ("exact_match_3", -1.0),
    ]


def test_user_function_with_args(user_module: Callable[[str, str], None]) -> None:
    user_module(
        "rl_user_rewards",
        """
        def contains(prompts, completions, answer, bonus=1.0, **columns):
            return [bonus if a in c else 0.0 for c, a in zip(completions, answer)]
        """,
    )
    spec = RewardSpec(name="rl_user_rewards:contains", weight=2.0, args={"bonus": 0.25})
    (source,) = build_reward_sources([spec], task=None)
    assert source.name == "rl_user_rewards:contains" and source.weight == 2.0
    assert _score(source, ["it is 12", "13"], answer=["12", "12"]) == [0.25, 0.0]


def test_user_function_in_a_package_and_nested_attribute(
    user_module: Callable[[str, str], None],
) -> None:
    user_module(
        "rl_user_pkg.scorers",
        """
        class Scorers:
            @staticmethod
            def half(prompts, completions, **columns):
                return [0.5] * len(completions)
        """,
    )
    (source,) = build_reward_sources(
        [RewardSpec(name="rl_user_pkg.scorers:Scorers.half")], task=None
    )
    assert _score(source, ["a", "b"]) == [0.5, 0.5]


def test_user_arg_named_like_a_column_is_an_error(
    user_module: Callable[[str, str], None],
) -> None:
    user_module(
        "rl_user_clash",
        "def score(prompts, completions, answer='x', **columns):\n    return [0.0]\n",
    )
    spec = RewardSpec(name="rl_user_clash:score", args={"answer": "42"})
    (source,) = build_reward_sources([spec], task=None)
    with pytest.raises(RewardlabError, match="arg 'answer' has the same name as a dataset column"):
        _score(source, ["c"], answer=["1"])


# ----------------------------------------------------------------------- config errors


def _build_error(specs: list[RewardSpec], task: Any = None) -> str:
    with pytest.raises(ConfigError) as excinfo:
        build_reward_sources(specs, task)
    return str(excinfo.value)


def test_unknown_reward_name_suggests_and_lists() -> None:
    message = _build_error([RewardSpec(name="task"), RewardSpec(name="exact_mach")], make_task(
        "sort", {}
    ))
    assert message.startswith("rewards[1].name: unknown reward 'exact_mach'")
    assert "did you mean 'exact_match'?" in message
    expected = ", ".join(sorted([*REWARD_FACTORIES, "task"]))
    assert f"built-ins are {expected}" in message
    assert "module:function" in message


def test_unknown_builtin_arg_names_the_key_and_valid_args() -> None:
    spec = RewardSpec(name="regex_format", args={"pattern": "x", "full_mach": True})
    message = _build_error([spec])
    assert message.startswith("rewards[0].args.full_mach:")
    assert "did you mean 'full_match'?" in message
    assert "pattern, full_match (default False)" in message


def test_missing_required_builtin_arg() -> None:
    message = _build_error([RewardSpec(name="length_penalty", args={"coef": 2.0})])
    assert message.startswith("rewards[0].args.max_chars:")
    assert "needs arg 'max_chars'" in message


def test_bad_builtin_arg_value_keeps_the_factorys_message() -> None:
    message = _build_error([RewardSpec(name="length_penalty", args={"max_chars": 0})])
    assert message.startswith("rewards[0].args: reward 'length_penalty': arg 'max_chars'")


def test_task_reward_without_a_task_points_to_dataset_rewards() -> None:
    message = _build_error([RewardSpec(name="task")], task=None)
    assert message.startswith("rewards[0].name:")
    assert "data.path" in message and "exact_match or math_verify" in message


def test_task_reward_takes_no_args() -> None:
    message = _build_error([RewardSpec(name="task", args={"strict": True})], make_task("sort", {}))
    assert message.startswith("rewards[0].args.strict:") and "data.task_args" in message


def test_weight_must_be_finite() -> None:
    assert _build_error([RewardSpec(name="task", weight=math.inf)]).startswith("rewards[0].weight")


def test_empty_reward_list() -> None:
    assert _build_error([]).startswith("rewards:")


def test_user_module_not_importable() -> None:
    message = _build_error([RewardSpec(name="rl_no_such_module_xyz:score")])
    assert message.startswith("rewards[0].name: cannot import module 'rl_no_such_module_xyz'")
    assert "No module named 'rl_no_such_module_xyz'" in message
    assert "PYTHONPATH" in message and "installed" in message


def test_user_module_with_a_missing_dependency_names_the_dependency(
    user_module: Callable[[str, str], None],
) -> None:
    user_module("rl_user_needs_dep", "import rl_missing_dependency_xyz\n")
    message = _build_error([RewardSpec(name="rl_user_needs_dep:score")])
    assert "No module named 'rl_missing_dependency_xyz'" in message


def test_user_module_that_crashes_on_import_keeps_its_traceback(
    user_module: Callable[[str, str], None],
) -> None:
    user_module("rl_user_crashes", "raise RuntimeError('boom in user module')\n")
    with pytest.raises(RuntimeError, match="boom in user module") as excinfo:
        build_reward_sources([RewardSpec(name="rl_user_crashes:score")], task=None)
    assert any("rewards[0]" in note for note in excinfo.value.__notes__)


def test_user_attribute_missing(user_module: Callable[[str, str], None]) -> None:
    user_module("rl_user_attr", "def score(prompts, completions, **columns):\n    return []\n")
    message = _build_error([RewardSpec(name="rl_user_attr:scor")])
    assert message.startswith("rewards[0].name: module 'rl_user_attr' has no attribute 'scor'")
    assert "did you mean 'score'?" in message


def test_user_attribute_not_callable(user_module: Callable[[str, str], None]) -> None:
    user_module("rl_user_not_callable", "THRESHOLD = 3\n")
    message = _build_error([RewardSpec(name="rl_user_not_callable:THRESHOLD")])
    assert message.startswith("rewards[0].name:") and "int, not a function" in message


def test_user_function_unknown_arg(user_module: Callable[[str, str], None]) -> None:
    user_module(
        "rl_user_strict",
        "def score(prompts, completions, answer, bonus=1.0):\n    return []\n",
    )
    message = _build_error([RewardSpec(name="rl_user_strict:score", args={"bonsu": 2})])
    assert message.startswith("rewards[0].args.bonsu:") and "did you mean 'bonus'?" in message


@pytest.mark.parametrize("name", ["mod:", ":fn", "a b:fn", "mod:fn:extra", ".rel:fn"])
def test_malformed_user_function_name(name: str) -> None:
    message = _build_error([RewardSpec(name=name)])
    assert message.startswith("rewards[0].name:") and "module.path:function" in message


# ----------------------------------------------------------------------- scoring


def test_score_completions_returns_float32_with_nan_for_none() -> None:
    sources = [RewardSource("a", 1.0, _fn([1, None, 0.5])), RewardSource("b", 1.0, _fn((0, 0, 0)))]
    scores = score_completions(sources, ["p"] * 3, ["c"] * 3, {})
    assert list(scores) == ["a", "b"]
    assert scores["a"].dtype == torch.float32 and scores["a"].shape == (3,)
    assert _same(scores["a"].tolist(), [1.0, NAN, 0.5])


def test_score_completions_passes_prompts_completions_and_columns() -> None:
    seen: dict[str, Any] = {}

    def spy(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        seen.update(prompts=prompts, completions=completions, columns=columns)
        return [0.0, 0.0]

    score_completions([RewardSource("s", 1.0, spy)], ["p1", "p2"], ["c1", "c2"], {"k": [1, 2]})
    assert seen == {"prompts": ["p1", "p2"], "completions": ["c1", "c2"], "columns": {"k": [1, 2]}}


@pytest.mark.parametrize(
    "returned", [torch.tensor([1.0, 0.0]), np.array([1, 0]), np.array([1.0, 0.0], np.float32)]
)
def test_tensor_and_array_returns_are_accepted(returned: Any) -> None:
    scores = score_completions([RewardSource("t", 1.0, _fn(returned))], ["p"] * 2, ["c"] * 2, {})
    assert scores["t"].tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ([1.0, 0.0, 1.0], "reward 'my_mod:f' returned 3 scores for 4 completions"),
        (
            [0.0, 1.0, "abc", 0.0],
            r"reward 'my_mod:f' returned 'abc' for completion 2; a reward function must return",
        ),
        ([0.0, True, 0.0, 0.0], "returned True for completion 1"),
        ([0.0, 0.0, 0.0, NAN], "returned nan for completion 3"),
        ([math.inf, 0.0, 0.0, 0.0], "returned inf for completion 0"),
        ([[1.0], 0.0, 0.0, 0.0], r"returned \[1.0\] for completion 0"),
        (0.5, r"reward 'my_mod:f' returned 0.5 \(float\)"),
        ("1111", r"returned '1111' \(str\)"),
        (None, r"returned None \(NoneType\)"),
    ],
)
def test_bad_return_values_name_reward_and_row(returned: Any, expected: str) -> None:
    with pytest.raises(RewardlabError, match=expected):
        score_completions([RewardSource("my_mod:f", 1.0, _fn(returned))], ["p"] * 4, ["c"] * 4, {})


def test_exception_in_user_code_names_the_reward_row_and_line() -> None:
    def buggy_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [1.0 / len(c) for c in completions]  # an empty completion divides by zero

    source = RewardSource("mine", 1.0, buggy_reward)
    with pytest.raises(RewardlabError) as excinfo:
        score_completions([source], ["p", "q"], ["ok", ""], {})
    message = str(excinfo.value)
    assert "reward 'mine' raised ZeroDivisionError" in message
    assert "on completion 1 (prompt 'q', completion '')" in message
    assert "test_rewards.py:" in message  # where in the user's code it raised
    cause = excinfo.value.__cause__
    assert isinstance(cause, ZeroDivisionError)  # the user's traceback stays reachable
    assert "buggy_reward" in [frame.name for frame in traceback.extract_tb(cause.__traceback__)]


def test_on_error_fallback_scores_bad_rows_and_counts_them() -> None:
    def flaky(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [1.0 / len(c) if c != "nan" else math.nan for c in completions]

    source = RewardSource("flaky", 1.0, flaky, on_error="fallback", fallback=-1.0)
    scores = score_completions([source], ["p"] * 4, ["ab", "", "nan", "a"], {})
    assert scores["flaky"].tolist() == [0.5, -1.0, -1.0, 1.0]
    assert drain_failure_counts([source]) == {"failures/flaky/raised": 1.0, "failures/flaky/not_finite": 1.0}
    assert drain_failure_counts([source]) == {}  # drained


def test_mismatched_batch_lists_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        score_completions([], ["p", "p"], ["c", "c"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="1 prompts for 2 completions"):
        score_completions([], ["p"], ["c", "c"], {})
    with pytest.raises(ValueError, match="may not be named"):
        score_completions([], ["p"], ["c"], {"completions": ["c"]})


# ----------------------------------------------------------------------- combine + metrics


def test_combine_is_a_weighted_sum() -> None:
    scores = {"a": torch.tensor([1.0, 0.0, 1.0]), "b": torch.tensor([0.5, 0.5, -1.0])}
    combined = combine_rewards(scores, {"a": 1.0, "b": 2.0})
    assert combined.dtype == torch.float32
    assert combined.tolist() == [2.0, 1.0, -1.0]


def test_combine_skips_nan_and_gives_zero_to_all_nan_rows() -> None:
    scores = {"a": torch.tensor([1.0, NAN, NAN, 1.0]), "b": torch.tensor([NAN, 0.5, NAN, 0.5])}
    combined = combine_rewards(scores, {"a": 2.0, "b": 3.0})
    # row 0: only a; row 1: only b (no re-weighting); row 2: nothing applies -> 0.0
    assert combined.tolist() == [2.0, 1.5, 0.0, 3.5]


def test_combine_zero_weight_source_that_does_not_apply() -> None:
    scores = {"a": torch.tensor([1.0]), "b": torch.tensor([NAN])}
    assert combine_rewards(scores, {"a": 1.0, "b": 0.0}).tolist() == [1.0]


def test_combine_needs_a_weight_per_source() -> None:
    with pytest.raises(ValueError, match="no weight for reward source"):
        combine_rewards({"a": torch.tensor([1.0])}, {"b": 1.0})


def test_reward_metrics_means_over_rows_that_apply() -> None:
    scores = {
        "a": torch.tensor([1.0, NAN, 0.0, 0.5]),
        "b": torch.tensor([NAN, NAN, NAN, NAN]),
        "c": torch.tensor([-1.0, -2.0, 0.0, 0.0]),
    }
    assert reward_metrics(scores) == {"reward/a": 0.5, "reward/c": -0.75}


def test_end_to_end_from_specs_to_one_reward_per_row() -> None:
    specs = [
        RewardSpec(name="exact_match"),
        RewardSpec(name="length_penalty", weight=0.5, args={"max_chars": 2}),
    ]
    sources = build_reward_sources(specs, task=None)
    scores = score_completions(
        sources, ["1+1="] * 3, ["2", "2222", "3"], {"answer": ["2", "2", None]}
    )
    rewards = combine_rewards(scores, {s.name: s.weight for s in sources})
    assert rewards.tolist() == [1.0, -0.5, 0.0]
    assert reward_metrics(scores) == {"reward/exact_match": 0.5, "reward/length_penalty": -1 / 3}


def test_math_verify_failure_counts_are_drained_as_metrics() -> None:
    from rewardlab.rewards import drain_failure_counts

    sources = build_reward_sources([RewardSpec(name="math_verify")], None)
    score_completions(sources, ["q", "q"], ["no answer here", "\\boxed{3}"], {"answer": ["3", "3"]})
    assert drain_failure_counts(sources) == {"failures/math_verify/no_answer": 1.0}
    assert drain_failure_counts(sources) == {}
