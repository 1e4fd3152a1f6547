"""Tests for the rule/verifiable rewards of rewardlab.rewards.rules (and exact_match's normalize)."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pytest
import sacrebleu

from rewardlab.config import RewardSpec
from rewardlab.errors import ConfigError, DataError
from rewardlab.rewards import REWARD_FACTORIES, RewardSource, build_reward_sources
from rewardlab.rewards import score_completions as _score_completions

NAN = math.nan
NEW = [
    "numeric",
    "multiple_choice",
    "format",
    "length",
    "cosine_length",
    "repetition",
    "overlong",
    "tool_call",
    "bleu",
]


def _one(name: str, **args: Any) -> RewardSource:
    (source,) = build_reward_sources([RewardSpec(name=name, args=args)], task=None)
    return source


def _score(source: RewardSource, completions: list[str], **columns: list[Any]) -> list[float]:
    prompts = ["p"] * len(completions)
    return _score_completions([source], prompts, completions, columns)[source.name].tolist()


def _same(got: list[float], want: list[float]) -> bool:
    """Elementwise equality where NaN equals NaN (floats compared to 1e-6)."""
    return len(got) == len(want) and all(
        (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, abs_tol=1e-6)
        for g, w in zip(got, want, strict=True)
    )


def _config_error(name: str, **args: Any) -> str:
    with pytest.raises(ConfigError) as excinfo:
        build_reward_sources([RewardSpec(name=name, args=args)], task=None)
    return str(excinfo.value)


# ----------------------------------------------------------------------- registry and docs


def test_every_rule_reward_is_registered_next_to_the_old_ones() -> None:
    assert set(NEW) | {"exact_match", "math_verify", "regex_format", "length_penalty"} <= set(
        REWARD_FACTORIES
    )


@pytest.mark.parametrize(
    ("name", "arxiv"),
    [
        ("format", "2501.12948"),
        ("cosine_length", "2502.03373"),
        ("overlong", "2503.14476"),
        ("tool_call", "2504.13958"),
        ("bleu", "2505.11080"),
    ],
)
def test_first_doc_paragraph_names_the_paper(name: str, arxiv: str) -> None:
    first = (inspect.getdoc(REWARD_FACTORIES[name]) or "").split("\n\n")[0]
    assert f"arXiv {arxiv}" in " ".join(first.split())


# ----------------------------------------------------------------------- exact_match normalize


def test_exact_match_normalize_folds_case_space_edges_and_answer_prefix() -> None:
    completions = [
        "The answer is: **Paris**.",
        "  PARIS!  ",
        "final answer:   new   york",
        "-5",
        "Lyon",
        "x",
    ]
    references = ["paris", "Paris", "New York", "5", "Paris", None]
    assert _same(
        _score(_one("exact_match", normalize=True), completions, answer=references),
        [1.0, 1.0, 1.0, 0.0, 0.0, NAN],  # a sign is not edge punctuation: -5 stays -5
    )
    # Without normalize only whitespace is stripped.
    assert _same(
        _score(_one("exact_match"), completions, answer=references),
        [0.0, 0.0, 0.0, 0.0, 0.0, NAN],
    )


def test_exact_match_normalize_must_be_a_bool() -> None:
    assert "reward 'exact_match': arg 'normalize'" in _config_error("exact_match", normalize="yes")


# ----------------------------------------------------------------------- numeric


def test_numeric_reads_the_last_number_in_its_many_forms() -> None:
    completions = [
        "so we get 1,234 apples",  # thousands separator
        "x = -3/4",  # negative simple fraction
        "it is 50%",  # % dropped: 50
        "first 12, then 13",  # the last number counts
        "about 0.3333334",  # |0.3333334 - 1/3| / (1/3) = 2e-7 <= rel_tol 1e-6
        "no digits here",
        "3-5",  # the '-' is glued to the 3: reads +5
        "7, not 1/0",  # 1/0 is no number, nor is the 0 after its '/'
        "anything",
    ]
    references = ["1234", -0.75, 50, "12", 1 / 3, "7", "#### -5", "7", None]
    got = _score(_one("numeric"), completions, answer=references)
    assert _same(got, [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, NAN])


def test_numeric_tolerances() -> None:
    completions = ["pi is 3.14", "2.5e-3"]
    references = [3.14159, "0.0025"]
    # |3.14 - 3.14159| = 0.00159: outside rel_tol 1e-6, inside abs_tol 0.01.
    assert _score(_one("numeric"), completions, answer=references) == [0.0, 1.0]
    assert _score(_one("numeric", abs_tol=0.01), completions, answer=references) == [1.0, 1.0]


def test_numeric_reference_without_a_number_is_a_data_error() -> None:
    with pytest.raises(DataError, match="row 1 of column 'gold' has no number"):
        _score(_one("numeric", column="gold"), ["1", "2"], gold=["1", "two"])


# ----------------------------------------------------------------------- multiple_choice


def test_multiple_choice_reads_the_usual_forms() -> None:
    completions = [
        "(B)",
        "B.",
        "Answer: B",
        "after some thought, the answer is B",
        "**Answer:** (B)",
        "A. 3\nB. 4\nC. 5\nSo the answer is option B.",  # an answer statement beats the list
        r"\boxed{B}",
        "The answer is a trick: (B)",  # the article 'a' is not option A
        "b",  # letters are case-sensitive
        "I cannot tell",
    ]
    got = _score(_one("multiple_choice"), completions, answer=["b"] * len(completions))
    assert got == [1.0] * 8 + [0.0, 0.0]


def test_multiple_choice_compares_with_the_reference_and_skips_missing_ones() -> None:
    source = _one("multiple_choice", choices="ABCD")
    got = _score(source, ["Answer: C", "Answer: C", "(E)", "D"], answer=["(C)", "a", "A", None])
    assert _same(got, [1.0, 0.0, 0.0, NAN])
    with pytest.raises(DataError, match="row 0 of column 'answer' names none of the options"):
        _score(source, ["A"], answer=["Z"])


def test_multiple_choice_choices_are_checked() -> None:
    message = _config_error("multiple_choice", choices="AAB")
    assert "reward 'multiple_choice': arg 'choices'" in message


# ----------------------------------------------------------------------- format


def test_format_matches_exactly_think_then_answer() -> None:
    completions = [
        "<think>\nstep 1\nstep 2\n</think>\n<answer>42</answer>",
        "  <think></think><answer>x</answer>\n",  # empty blocks, outer whitespace: fine
        "<think>a</think> so <answer>42</answer>",  # text between the blocks
        "Sure! <think>a</think><answer>42</answer>",  # text before
        "<think>a</think><answer>42</answer> done",  # text after
        "<think>a</think><answer>1</answer><answer>2</answer>",  # a second answer
        "<answer>42</answer><think>a</think>",  # wrong order
        "<think>a</think>",
    ]
    assert _score(_one("format"), completions) == [1.0, 1.0] + [0.0] * 6


def test_format_with_other_tags() -> None:
    source = _one("format", think_tag="reasoning", answer_tag="tool_call")
    completions = ["<reasoning>r</reasoning>\n<tool_call>{}</tool_call>", "<think>r</think>"]
    assert _score(source, completions) == [1.0, 0.0]
    assert "arg 'think_tag'" in _config_error("format", think_tag="<think>")


# ----------------------------------------------------------------------- length


def test_length_with_a_limit_and_with_a_target() -> None:
    limit = _one("length", max_chars=4, coef=0.5)
    got = _score(limit, ["", "abcd", "abcde", "abcdef", "a" * 8, "a" * 20])
    # -0.5 * min(1, over / 4): over = 1 -> -0.125, 2 -> -0.25, from 4 on -> -0.5
    assert _same(got, [0.0, 0.0, -0.125, -0.25, -0.5, -0.5])
    target = _one("length", target=10)
    got = _score(target, ["", "a" * 7, "a" * 10, "a" * 15, "a" * 25])
    # -min(1, |L - 10| / 10): 10/10, 3/10, 0, 5/10, capped at 1
    assert _same(got, [-1.0, -0.3, 0.0, -0.5, -1.0])


def test_length_needs_exactly_one_of_max_chars_and_target() -> None:
    assert "exactly one of args 'max_chars'" in _config_error("length")
    assert "exactly one of args 'max_chars'" in _config_error("length", max_chars=5, target=5)
    assert "reward 'length': arg 'target'" in _config_error("length", target=0)


# ----------------------------------------------------------------------- cosine_length


def test_cosine_length_paper_defaults() -> None:
    source = _one("cosine_length", max_len=100, correct_reward="numeric")
    completions = [
        "7" + " " * 49,  # correct, L = 50
        "8" + " " * 49,  # wrong, L = 50
        "7" + " " * 99,  # correct, L = 100 = L_max
        "8" + " " * 24,  # wrong, L = 25
        "",  # wrong (no number), L = 0
        "7" + " " * 100,  # L = 101 > L_max
        "7",  # no reference
    ]
    got = _score(source, completions, answer=[7] * 6 + [None])
    want = [
        1.5,  # 1 + (2 - 1) * (1 + cos(pi/2)) / 2 = 1 + 0.5
        -5.0,  # 0 + (-10 - 0) * (1 + 0) / 2
        1.0,  # cos(pi) = -1: the value at L_max
        -8.535534,  # -10 * (1 + cos(pi/4)) / 2 = -10 * 1.7071068 / 2
        -10.0,  # the value at L = 0
        -10.0,  # exceed
        NAN,
    ]
    assert _same(got, want)


def test_cosine_length_open_r1_values_and_exact_match_judge() -> None:
    source = _one(
        "cosine_length",
        max_len=10,
        correct_at_zero=1.0,
        correct_at_max=0.5,
        wrong_at_zero=-1.0,
        wrong_at_max=-0.5,
    )
    got = _score(source, ["abcde", "abcdf", "abcde     x"], answer=["abcde"] * 3)
    # L = 5 = L_max / 2, cosine term 1/2: correct 0.5 + 0.5 * 0.5 = 0.75, wrong -0.75
    # (open-r1 writes the wrong case with swapped min/max: -0.5 + 0.5 * (-1 + 0.5) * 1).
    # The third is 11 characters: exceed, -10.
    assert _same(got, [0.75, -0.75, -10.0])


def test_cosine_length_checks_its_args() -> None:
    message = _config_error("cosine_length", max_len=10, correct_reward="bleu")
    assert "reward 'cosine_length': arg 'correct_reward' must be one of" in message
    assert "arg 'max_len'" in _config_error("cosine_length", max_len=0)
    assert "arg 'exceed'" in _config_error("cosine_length", max_len=5, exceed=math.inf)


# ----------------------------------------------------------------------- repetition


def test_repetition_penalty() -> None:
    completions = ["a b c a b c", "A b C a B c", "x x x x x", "a b", "", "one two three four"]
    got = _score(_one("repetition"), completions)
    # "a b c a b c": trigrams abc bca cab abc -> 3 distinct of 4 -> -(1 - 3/4) = -0.25;
    # case is folded; "x x x x x": 3 trigrams, 1 distinct -> -(1 - 1/3); under 3 words -> 0
    assert _same(got, [-0.25, -0.25, -2 / 3, 0.0, 0.0, 0.0])
    half = _one("repetition", ngram_size=2, max_penalty=-0.5)
    # bigrams ab bc ca ab bc -> 3 distinct of 5 -> -0.5 * (1 - 3/5) = -0.2
    assert _same(_score(half, ["a b c a b c"]), [-0.2])
    assert "arg 'max_penalty' must be a number <= 0" in _config_error("repetition", max_penalty=1)


# ----------------------------------------------------------------------- overlong


def test_overlong_soft_punishment() -> None:
    source = _one("overlong", max_len=10, cache_len=4)
    got = _score(source, ["a" * n for n in (0, 6, 7, 8, 10, 12)])
    # 0 up to 10 - 4 = 6, then (6 - L) / 4: -1/4, -2/4, -4/4, then -1
    assert _same(got, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    words = _one("overlong", max_len=10, cache_len=4, penalty=0.5, unit="words")
    assert _same(_score(words, ["a " * 7, "a" * 50]), [-0.125, 0.0])  # 7 words; 1 word
    default_cache = _one("overlong", max_len=20)  # cache_len 20 // 5 = 4: from 16 on
    assert _same(_score(default_cache, ["a" * 16, "a" * 18]), [0.0, -0.5])


def test_overlong_checks_cache_len() -> None:
    message = _config_error("overlong", max_len=10, cache_len=11)
    assert "reward 'overlong': arg 'cache_len'" in message
    assert "arg 'unit'" in _config_error("overlong", max_len=10, unit="tokens")


# ----------------------------------------------------------------------- tool_call


WEATHER_ARGS = {"city": "Paris", "unit": "C"}
WEATHER = [{"name": "get_weather", "arguments": WEATHER_ARGS}]


def _call(name: str, **args: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def test_tool_call_single_call_hand_checked() -> None:
    completions = [
        "<think>easy</think>\n" + _call("get_weather", city="Paris", unit="C"),
        _call("get_weather", city="Paris", unit="F"),
        _call("get_weather", city="Paris"),
        _call("get_time", city="Paris", unit="C"),
        '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>',
        "I would call get_weather",
        "<tool_call>"
        + json.dumps({"name": "get_weather", "arguments": json.dumps(WEATHER_ARGS)})
        + "</tool_call>",
        "x",
    ]
    references: list[Any] = [WEATHER] * 7 + [None]
    # S_max = 1 + (1 + 2 parameters) = 4; R_correct = 6 S / 4 - 3.
    correctness = [
        3.0,  # exactly the reference
        1.5,  # S = 1 name + 1 param names + 1 value = 3
        0.75,  # S = 1 + Jaccard({city, unit}, {city}) 1/2 + 1 value = 2.5
        -3.0,  # other tool: names Jaccard 0, nothing matched, S = 0
        -3.0,  # malformed JSON
        -3.0,  # no call at all
        3.0,  # OpenAI-style JSON-string arguments
        NAN,
    ]
    form = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, NAN]
    fmt = _score(_one("tool_call", part="format"), completions, answer=references)
    cor = _score(_one("tool_call", part="correctness"), completions, answer=references)
    both = _score(_one("tool_call"), completions, answer=references)
    assert _same(fmt, form)
    assert _same(cor, correctness)
    assert _same(both, [f + c for f, c in zip(form, correctness, strict=True)])


def test_tool_call_several_calls_toolrl_layout() -> None:
    # The reference as ToolRL writes it: one block, one call per line, "parameters".
    reference = (
        "<tool_call>\n"
        '{"name": "search", "parameters": {"q": "x"}}\n'
        '{"name": "calc", "parameters": {"expr": "1+1"}}\n'
        "</tool_call>"
    )
    completion = _call("calc", expr="1+1") + _call("search", q="y") + _call("search", q="x")
    got = _score(_one("tool_call", part="correctness"), [completion], answer=[reference])
    # S_max = 1 + (1 + 1) + (1 + 1) = 5.
    # names [search, calc] vs [calc, search, search]: 2 shared / (2 + 3 - 2) = 2/3;
    # search: best of q="y" (1 + 0) and q="x" (1 + 1) = 2; calc: 1 + 1 = 2. S = 2/3 + 4 = 14/3.
    # R = 6 * (14/3) / 5 - 3 = 2.6
    assert _same(got, [2.6])
    scaled = _one("tool_call", part="correctness", correct_scale=1.0)
    assert _same(_score(scaled, [completion], answer=[reference]), [2.6 / 3])


def test_tool_call_names_jaccard_counts_the_union() -> None:
    reference = [
        {"name": "search", "arguments": {"q": "x"}},
        {"name": "calc", "arguments": {"expr": "1+1"}},
    ]
    completion = _call("search", q="x") + "\n" + _call("lookup", q="x")
    got = _score(_one("tool_call", part="correctness"), [completion], answer=[reference])
    # S_max = 5; names {search, calc} vs {search, lookup}: 1 shared / 3 in the union;
    # search matched: 1 + 1 = 2; calc unmatched. S = 1/3 + 2 = 7/3; R = 6 * (7/3) / 5 - 3 = -0.2
    assert _same(got, [-0.2])


def test_tool_call_when_no_call_is_expected() -> None:
    source = _one("tool_call", column="tools")
    # no call expected: format 1 without a block, 0 with one; correctness 0 either way
    assert _score(source, ["It is sunny.", _call("get_weather")], tools=["[]", []]) == [1.0, 0.0]


def test_tool_call_bad_reference_is_a_data_error() -> None:
    with pytest.raises(DataError, match="row 0 of column 'answer' is not a list of tool calls"):
        _score(_one("tool_call"), ["x"], answer=['{"tool": "f"}'])


# ----------------------------------------------------------------------- bleu


def test_bleu_hand_checked() -> None:
    got = _score(_one("bleu"), ["the cat sat on the mat"], answer=["the cat is on the mat"])
    # n-gram precisions 5/6, 3/5, 1/4 and 0/3, smoothed ('exp') to 1/(2 * 3); equal lengths,
    # so no brevity penalty: BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = 0.379918
    assert _same(got, [(5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25])


def test_bleu_equals_sacrebleu_sentence_scores() -> None:
    hyps = ["the quick brown fox jumps", "a completely different sentence", "", "hello world"]
    refs: list[Any] = [
        "the quick brown fox jumped over",
        ["one reference here", "a different sentence entirely"],
        "anything",
        None,
    ]
    want_bleu = [
        sacrebleu.sentence_bleu(hyps[0], [refs[0]]).score / 100,
        sacrebleu.sentence_bleu(hyps[1], refs[1]).score / 100,
        0.0,  # empty completion
        NAN,  # no reference
    ]
    assert 0 < want_bleu[0] < 1 and 0 < want_bleu[1] < 1
    assert _same(_score(_one("bleu"), hyps, answer=refs), want_bleu)
    want_chrf = [
        sacrebleu.sentence_chrf(hyps[0], [refs[0]]).score / 100,
        sacrebleu.sentence_chrf(hyps[1], refs[1]).score / 100,
        0.0,
        NAN,
    ]
    assert _same(_score(_one("bleu", metric="chrf"), hyps, answer=refs), want_chrf)
    assert want_chrf[0] != pytest.approx(want_bleu[0])


def test_bleu_reference_edge_cases() -> None:
    got = _score(_one("bleu"), ["same words here", "x"], answer=["same words here", []])
    assert _same(got, [1.0, NAN])
    with pytest.raises(DataError, match="row 0 of column 'answer' must be a reference string"):
        _score(_one("bleu"), ["x"], answer=[3])
    assert "arg 'metric' must be one of 'bleu', 'chrf'" in _config_error("bleu", metric="rouge")


# ----------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("numeric", {}),
        ("multiple_choice", {}),
        ("cosine_length", {"max_len": 10}),
        ("tool_call", {}),
        ("bleu", {}),
    ],
)
def test_missing_reference_column_is_a_data_error_naming_it(
    name: str, args: dict[str, Any]
) -> None:
    with pytest.raises(DataError, match=f"reward '{name}' reads column 'answer'.*columns: gold"):
        _score(_one(name, **args), ["1"], gold=["1"])


@pytest.mark.parametrize(
    ("name", "args", "arg"),
    [
        ("numeric", {"rel_tol": -1}, "rel_tol"),
        ("numeric", {"column": ""}, "column"),
        ("length", {"max_chars": 5, "coef": "big"}, "coef"),
        ("repetition", {"ngram_size": 0}, "ngram_size"),
        ("tool_call", {"part": "all"}, "part"),
        ("tool_call", {"correct_scale": 0}, "correct_scale"),
        ("tool_call", {"open_tag": "<t>", "close_tag": "<t>"}, "open_tag"),
        ("format", {"think_tag": "x", "answer_tag": "x"}, "think_tag"),
    ],
)
def test_bad_args_name_the_reward_and_the_arg(name: str, args: dict[str, Any], arg: str) -> None:
    message = _config_error(name, **args)
    assert message.startswith(f"rewards[0].args: reward '{name}': arg")
    assert f"'{arg}'" in message
