"""Preference data in its three formats (pairwise, unpaired/KTO, listwise/LiPO): loading,
row checks and their messages, skipping, format detection, held-out examples, and the
task-built listwise set."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from rewardlab.config import DataConfig
from rewardlab.data.datasets import SKIP_HINT, load_rows
from rewardlab.data.preferences import (
    Pair,
    Ranked,
    Unpaired,
    detect_preference_format,
    heldout_examples,
    heldout_pairs,
    load_preference_data,
    preference_pairs,
    task_pair,
    task_ranked,
)
from rewardlab.data.tasks import Problem, Task, make_task
from rewardlab.errors import ConfigError, DataError

PAIR_ROW = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
UNPAIRED_ROW = {"prompt": "2+2=", "completion": "4", "label": True}
LISTWISE_ROW = {"prompt": "2+2=", "completions": ["4", "5", "22"], "scores": [1.0, 0.2, -1]}
GOOD_ROWS = {"pair": PAIR_ROW, "unpaired": UNPAIRED_ROW, "listwise": LISTWISE_ROW}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Every row has every column (null when absent), as pandas or datasets would write them.
    columns = list(dict.fromkeys(k for row in rows for k in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)
    return path


def load(path: Path, tokenizer: Any = None, **data: Any):
    return load_preference_data(DataConfig(path=str(path), **data), tokenizer, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    from rewardlab.models.tiny import build_tokenizer

    return build_tokenizer()


# --------------------------------------------------------------------------- good files


def test_each_format_loads_from_jsonl(tmp_path: Path) -> None:
    pairs = load(write_jsonl(tmp_path / "p.jsonl", [PAIR_ROW]))
    assert (pairs.format, pairs.examples, pairs.skipped) == (
        "pairwise",
        [Pair("2+2=", "4", "5")],
        0,
    )

    rows = [UNPAIRED_ROW, {**UNPAIRED_ROW, "completion": "5", "label": False}]
    rows += [{**UNPAIRED_ROW, "label": 1}, {**UNPAIRED_ROW, "completion": "22", "label": 0}]
    unpaired = load(write_jsonl(tmp_path / "u.jsonl", rows))
    assert unpaired.format == "unpaired" and unpaired.skipped == 0
    assert unpaired.examples == [
        Unpaired("2+2=", "4", True),
        Unpaired("2+2=", "5", False),
        Unpaired("2+2=", "4", True),  # 1 and 0 are read as true and false
        Unpaired("2+2=", "22", False),
    ]
    assert all(type(e.label) is bool for e in unpaired.examples)

    ranked = load(write_jsonl(tmp_path / "l.jsonl", [LISTWISE_ROW]))
    assert ranked.format == "listwise"
    assert ranked.examples == [Ranked("2+2=", ("4", "5", "22"), (1.0, 0.2, -1.0))]
    assert all(type(s) is float for s in ranked.examples[0].scores)


def test_extra_columns_and_other_file_types(tmp_path: Path) -> None:
    rows = [{**UNPAIRED_ROW, "id": 1}, {**UNPAIRED_ROW, "label": False, "id": 2}]
    path = tmp_path / "u.json"
    path.write_text(json.dumps(rows))
    assert [e.label for e in load(path).examples] == [True, False]
    parquet = write_parquet(
        tmp_path / "l.parquet", [LISTWISE_ROW, {**LISTWISE_ROW, "scores": [3, 2, 1]}]
    )
    assert [e.scores for e in load(parquet).examples] == [(1.0, 0.2, -1.0), (3.0, 2.0, 1.0)]


def test_conversational_rows_render_the_prompt_and_the_last_reply(
    tmp_path: Path, tokenizer
) -> None:
    template = "<|user|>2+2?\n<|assistant|>"  # the tiny tokenizer's chat template
    unpaired = [
        {"prompt": user("2+2?"), "completion": reply("4"), "label": True},
        {"prompt": user("2+2?"), "completion": reply("5"), "label": False},
    ]
    data = load(write_jsonl(tmp_path / "u.jsonl", unpaired), tokenizer)
    assert data.format == "unpaired"
    assert data.examples == [Unpaired(template, "4", True), Unpaired(template, "5", False)]

    listwise = {"prompt": user("2+2?"), "completions": [reply("4"), reply("5")], "scores": [2, 1]}
    data = load(write_jsonl(tmp_path / "l.jsonl", [listwise]), tokenizer)
    assert data.examples == [Ranked(template, ("4", "5"), (2.0, 1.0))]

    pair = {"prompt": user("2+2?"), "chosen": reply("4"), "rejected": reply("5")}
    data = load(write_jsonl(tmp_path / "p.jsonl", [pair]), tokenizer)
    assert data.examples == [Pair(template, "4", "5")]


def test_conversational_rows_from_parquet(tmp_path: Path, tokenizer) -> None:
    rows = [
        {"prompt": user("2+2?"), "completion": reply("4"), "label": True},
        {"prompt": user("3+3?"), "completion": reply("7"), "label": False},
    ]
    data = load(write_parquet(tmp_path / "u.parquet", rows), tokenizer)
    assert [(e.prompt, e.completion, e.label) for e in data.examples] == [
        ("<|user|>2+2?\n<|assistant|>", "4", True),
        ("<|user|>3+3?\n<|assistant|>", "7", False),
    ]


def test_a_task_gives_pairs(tmp_path: Path) -> None:
    data = DataConfig(task="arithmetic", num_examples=8, heldout_size=5)
    loaded = load_preference_data(data, None, seed=3)
    assert loaded.format == "pairwise" and loaded.skipped == 0
    assert loaded.examples == preference_pairs(data, None, 3)[0]
    assert heldout_examples(data, None, seed=3) == heldout_pairs(data, None, 3)


# --------------------------------------------------------------------------- bad rows
#
# Each case: (kind, bad row, text the message has after "<file>, line 2: "). Line 1 is a good
# row of the kind, so the file's format is detected from it.

BAD_ROWS: dict[str, tuple[str, Any, str]] = {
    "unpaired_missing_label": (
        "unpaired",
        {"prompt": "x", "completion": "y"},
        (
            "the row needs 'prompt', 'completion' and 'label', but 'label' is missing "
            "(its fields are 'completion', 'prompt')"
        ),
    ),
    "unpaired_misspelled_label": (
        "unpaired",
        {"prompt": "x", "completion": "y", "lable": True},
        "'lable' looks like a misspelling of 'label'",
    ),
    "unpaired_null_label": (
        "unpaired",
        {"prompt": "x", "completion": "y", "label": None},
        "but 'label' is null",
    ),
    "unpaired_missing_prompt": (
        "unpaired",
        {"completion": "y", "label": True},
        "but 'prompt' is missing",
    ),
    "label_string": (
        "unpaired",
        {"prompt": "x", "completion": "y", "label": "true"},
        (
            "field 'label' must be true (a desirable completion) or false (an undesirable one), "
            "or 1 or 0, but is the string 'true'"
        ),
    ),
    "label_two": (
        "unpaired",
        {"prompt": "x", "completion": "y", "label": 2},
        "field 'label' must be true",
    ),
    "label_float": (
        "unpaired",
        {"prompt": "x", "completion": "y", "label": 1.0},
        "but is the number 1.0",
    ),
    "label_list": (
        "unpaired",
        {"prompt": "x", "completion": "y", "label": [True]},
        (
            "field 'label' must be true (a desirable completion) or false (an undesirable one), "
            "or 1 or 0, but is a list"
        ),
    ),
    "completion_number": (
        "unpaired",
        {"prompt": "x", "completion": 4, "label": True},
        "field 'completion' must be a string or a list of messages but is a number",
    ),
    "completion_empty": (
        "unpaired",
        {"prompt": "x", "completion": " ", "label": True},
        "field 'completion' is empty",
    ),
    "completion_messages_end_with_user": (
        "unpaired",
        {"prompt": user("x"), "completion": user("y"), "label": True},
        "field 'completion' is a list of messages but does not end with an assistant message",
    ),
    "completion_message_bad_role": (
        "unpaired",
        {"prompt": user("x"), "completion": [{"role": "asistant", "content": "y"}], "label": True},
        (
            "field 'completion[0].role' is 'asistant', which is not one of system, user, assistant, "
            "tool (did you mean 'assistant'?)"
        ),
    ),
    "prompt_empty_list": (
        "unpaired",
        {"prompt": [], "completion": "y", "label": True},
        "field 'prompt' is an empty list; add at least one message",
    ),
    "prompt_number": (
        "unpaired",
        {"prompt": 3, "completion": "y", "label": True},
        "field 'prompt' must be a string or a list of messages but is a number",
    ),
    "prompt_message_without_content": (
        "listwise",
        {"prompt": [{"role": "user"}], "completions": ["a", "b"], "scores": [1, 0]},
        "field 'prompt[0].content' is missing",
    ),
    "listwise_missing_scores": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"]},
        "the row needs 'prompt', 'completions' and 'scores', but 'scores' is missing",
    ),
    "completions_not_list": (
        "listwise",
        {"prompt": "x", "completions": "a", "scores": [1]},
        (
            "field 'completions' must be a list of completions (strings, or lists of messages) "
            "but is a string"
        ),
    ),
    "completions_empty": (
        "listwise",
        {"prompt": "x", "completions": [], "scores": []},
        "field 'completions' is an empty list, but a listwise row needs at least 2 to rank",
    ),
    "completions_one": (
        "listwise",
        {"prompt": "x", "completions": ["a"], "scores": [1]},
        "field 'completions' holds only 1 completion, but a listwise row needs at least 2 to rank",
    ),
    "completion_entry_number": (
        "listwise",
        {"prompt": "x", "completions": ["a", 5], "scores": [1, 0]},
        "field 'completions[1]' must be a string or a list of messages but is a number",
    ),
    "completion_entry_empty": (
        "listwise",
        {"prompt": "x", "completions": ["a", ""], "scores": [1, 0]},
        "field 'completions[1]' is empty",
    ),
    "completion_entry_message_not_object": (
        "listwise",
        {"prompt": user("x"), "completions": [reply("a"), ["b"]], "scores": [1, 0]},
        "field 'completions[1][0]' must be an object with 'role' and 'content' but is a string",
    ),
    "completion_entry_is_a_message": (
        "listwise",
        {"prompt": user("x"), "completions": reply("a") + reply("b"), "scores": [1, 0]},
        "field 'completions[0]' must be a string or a list of messages but is an object",
    ),
    "scores_not_list": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"], "scores": 1},
        "field 'scores' must be a list of numbers, one per completion, but is a number",
    ),
    "scores_length_mismatch": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b", "c"], "scores": [1, 0]},
        "field 'scores' has 2 entries but 'completions' has 3; give one score per completion",
    ),
    "score_string": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"], "scores": [1, "0.5"]},
        "field 'scores[1]' must be a number but is the string '0.5'",
    ),
    "score_boolean": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"], "scores": [True, False]},
        "field 'scores[0]' must be a number but is a boolean",
    ),
    "score_null": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"], "scores": [1, None]},
        "field 'scores[1]' must be a number but is null",
    ),
    "score_nan": (
        "listwise",
        '{"prompt": "x", "completions": ["a", "b"], "scores": [1, NaN]}',
        "field 'scores[1]' is nan, but scores must be finite numbers",
    ),
    "score_infinite": (
        "listwise",
        '{"prompt": "x", "completions": ["a", "b"], "scores": [-Infinity, 0]}',
        "field 'scores[0]' is -inf, but scores must be finite numbers",
    ),
    "score_too_large_for_a_float": (
        "listwise",
        {"prompt": "x", "completions": ["a", "b"], "scores": [10**400, 0]},
        "field 'scores[0]' is 1000000",
    ),
    "pair_side_message_bad_role": (
        "pair",
        {"prompt": user("x"), "chosen": [{"role": "bot", "content": "y"}], "rejected": reply("z")},
        "field 'chosen[0].role' is 'bot'",
    ),
    "pair_missing_rejected": (
        "pair",
        {"prompt": "x", "chosen": "y"},
        "the row needs 'prompt', 'chosen' and 'rejected', but 'rejected' is missing",
    ),
}


@pytest.mark.parametrize(("kind", "row", "expected"), BAD_ROWS.values(), ids=BAD_ROWS)
def test_bad_row_message_names_file_line_and_field(tmp_path: Path, kind, row, expected) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD_ROWS[kind], row, GOOD_ROWS[kind]])
    with pytest.raises(DataError) as err:
        load_rows(path, kind=kind)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 2: ")
    assert expected in msg
    assert msg.endswith(f"; {SKIP_HINT}.")
    # The same check when the format is detected from the file.
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == msg


def test_bad_parquet_row_names_the_row(tmp_path: Path) -> None:
    rows = [LISTWISE_ROW, {**LISTWISE_ROW, "scores": [1.0, 2.0]}]
    path = write_parquet(tmp_path / "l.parquet", rows)
    with pytest.raises(DataError, match=r"l\.parquet, row 2: field 'scores' has 2 entries but"):
        load(path)


def test_skip_bad_rows_counts_them(tmp_path: Path) -> None:
    rows = [
        LISTWISE_ROW,
        {**LISTWISE_ROW, "scores": [1, 2]},
        "{not json",
        {**LISTWISE_ROW, "completions": []},
        {"prompt": "x", "completions": ["a", "b"]},  # no scores: not detected, reported here
        {**LISTWISE_ROW, "prompt": "3+3="},
        '{"prompt": "x", "completions": ["a", "b"], "scores": [1, NaN]}',
    ]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    data = load(path, skip_bad_rows=True)
    assert data.format == "listwise" and data.skipped == 5
    assert [e.prompt for e in data.examples] == ["2+2=", "3+3="]

    loaded = load_rows(path, kind="listwise", skip_bad_rows=True)
    assert [m.split(": ")[0] for m in loaded.skipped] == [
        f"{path}, line {n}" for n in (2, 3, 4, 5, 7)
    ]
    assert "field 'scores' has 2 entries" in loaded.skipped[0]
    assert "but 'scores' is missing" in loaded.skipped[3]

    unpaired = [UNPAIRED_ROW, {**UNPAIRED_ROW, "label": "no"}, {**UNPAIRED_ROW, "label": 0}]
    data = load(write_jsonl(tmp_path / "u.jsonl", unpaired), skip_bad_rows=True)
    assert data.skipped == 1 and [e.label for e in data.examples] == [True, False]


def test_a_completion_that_overflows_the_context_is_a_bad_row_in_every_format(tmp_path: Path) -> None:
    """The prompt, each completion and EOS must fit ``model_max_length`` (as the trainer's
    batches put them); the row is named, or skipped and counted with skip_bad_rows."""
    from rewardlab.models.tiny import build_tokenizer

    small = build_tokenizer()
    prompt = len(small("2+2=", add_special_tokens=True)["input_ids"])
    small.model_max_length = prompt + 3 + 1  # a 3-token completion and EOS fit, 4 do not
    fits, overflows = "123", "1234"
    assert len(small(fits, add_special_tokens=False)["input_ids"]) == 3
    files = {
        "'rejected'": [PAIR_ROW, {**PAIR_ROW, "rejected": overflows}],
        "'completion'": [UNPAIRED_ROW, {**UNPAIRED_ROW, "completion": overflows}],
        "'completions[2]'": [LISTWISE_ROW, {**LISTWISE_ROW, "completions": ["4", fits, overflows]}],
    }
    for i, (name, rows) in enumerate(files.items()):
        path = write_jsonl(tmp_path / f"{i}.jsonl", rows)
        with pytest.raises(DataError, match=rf"line 2: the prompt and {re.escape(name)} are {prompt + 5} tokens"):
            load(path, small)
        data = load(path, small, skip_bad_rows=True)
        assert data.skipped == 1 and len(data.examples) == 1
    # No check when the context is unknown (transformers' huge placeholder).
    small.model_max_length = int(1e30)
    assert load(write_jsonl(tmp_path / "big.jsonl", files["'rejected'"]), small).skipped == 0


def test_all_rows_bad(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [{**UNPAIRED_ROW, "label": "yes"}])
    with pytest.raises(DataError, match=r"all 1 rows of .*u\.jsonl are bad"):
        load(path, skip_bad_rows=True)
    path = write_jsonl(tmp_path / "broken.jsonl", ["{", "["])
    with pytest.raises(
        DataError, match=r"all 2 rows of .*broken\.jsonl are bad.*line 1: invalid JSON"
    ):
        detect_preference_format(path)


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(ValueError, match="'unpaired' or 'listwise'"):
        load_rows("whatever.jsonl", kind="ranked")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- detection


def test_format_is_detected_from_the_columns(tmp_path: Path) -> None:
    for name, row, fmt in [
        ("p.jsonl", PAIR_ROW, "pairwise"),
        ("u.jsonl", UNPAIRED_ROW, "unpaired"),
        ("l.jsonl", LISTWISE_ROW, "listwise"),
    ]:
        assert detect_preference_format(write_jsonl(tmp_path / name, [row]), "train") == fmt
    # Columnar formats fill absent columns with null; those do not count.
    path = write_parquet(tmp_path / "u.parquet", [UNPAIRED_ROW, {"prompt": "x", "chosen": None}])
    assert detect_preference_format(path, "train") == "unpaired"


def test_detection_reads_a_split_of_a_saved_dataset_dict(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "prefs"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([PAIR_ROW]),
            "test": datasets.Dataset.from_list([LISTWISE_ROW]),
        }
    ).save_to_disk(str(folder))
    assert detect_preference_format(folder, "train") == "pairwise"
    assert detect_preference_format(folder, "test") == "listwise"
    with pytest.raises(DataError, match="no split 'dev'.*set data.eval_split"):
        detect_preference_format(folder, "dev", split_key="data.eval_split")


def test_mixed_formats_are_a_config_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [PAIR_ROW, PAIR_ROW, UNPAIRED_ROW])
    with pytest.raises(ConfigError) as err:
        load(path, skip_bad_rows=True)
    msg = str(err.value)
    assert msg.startswith(
        f"{path} mixes preference formats: line 1 is pairwise and line 3 is unpaired (KTO); "
        "use one format for every row of a file"
    )
    assert "pairwise rows need 'prompt', 'chosen' and 'rejected'" in msg
    assert "unpaired (KTO) rows need 'prompt', 'completion' and 'label'" in msg
    assert "listwise (LiPO) rows need 'prompt', 'completions' and 'scores'" in msg

    both = write_jsonl(tmp_path / "both.jsonl", [{**PAIR_ROW, **LISTWISE_ROW}])
    with pytest.raises(ConfigError, match=r"line 1 is pairwise and listwise \(LiPO\)"):
        detect_preference_format(both, "train")

    parquet = write_parquet(tmp_path / "mixed.parquet", [LISTWISE_ROW, UNPAIRED_ROW])
    with pytest.raises(ConfigError, match="row 1 is listwise .* and row 2 is unpaired"):
        detect_preference_format(parquet, "train")


def test_a_file_of_no_format_is_a_config_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "x", "completion": "y"}])
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} does not look like preference data")
    assert "unpaired (KTO) rows need 'prompt', 'completion' and 'label'" in msg
    assert msg.endswith("its columns are 'completion', 'prompt'.")

    path = write_jsonl(tmp_path / "typo.jsonl", [{"prompt": "x", "chosen": "y", "rejcted": "z"}])
    with pytest.raises(ConfigError, match=r"\(for 'rejcted', did you mean 'rejected'\?\)"):
        detect_preference_format(path, "train")


# --------------------------------------------------------------------------- held out


def test_heldout_examples_take_the_eval_file_in_its_format(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [UNPAIRED_ROW] * 3)
    rows = [{**UNPAIRED_ROW, "prompt": f"q{i}", "label": i % 2} for i in range(5)]
    evals = write_jsonl(tmp_path / "eval.jsonl", rows + [{**UNPAIRED_ROW, "label": None}])
    data = DataConfig(path=str(train), eval_path=str(evals), heldout_size=3, skip_bad_rows=True)
    held = heldout_examples(data, None, seed=0)
    assert held == [Unpaired(f"q{i}", "4", bool(i % 2)) for i in range(3)]
    data = DataConfig(path=str(train), eval_path=str(evals), heldout_size=3)
    with pytest.raises(DataError, match=r"eval\.jsonl, line 6: the row needs .* 'label' is null"):
        heldout_examples(data, None, seed=0)


def test_heldout_examples_without_an_eval_file_are_the_first_rows(tmp_path: Path) -> None:
    rows = [{**LISTWISE_ROW, "prompt": f"q{i}"} for i in range(4)]
    data = DataConfig(path=str(write_jsonl(tmp_path / "l.jsonl", rows)), heldout_size=2)
    held = heldout_examples(data, None, seed=0)
    assert all(isinstance(e, Ranked) for e in held) and [e.prompt for e in held] == ["q0", "q1"]


def test_heldout_file_of_another_format_is_a_config_error(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [PAIR_ROW])
    evals = write_jsonl(tmp_path / "eval.jsonl", [LISTWISE_ROW])
    data = DataConfig(path=str(train), eval_path=str(evals))
    with pytest.raises(
        ConfigError,
        match=r"data.eval_path .*eval\.jsonl holds listwise \(LiPO\) data but data.path",
    ):
        heldout_examples(data, None, seed=0)
    assert heldout_pairs(DataConfig(path=str(train)), None, seed=0) == [Pair("2+2=", "4", "5")]


# --------------------------------------------------------------------------- task-built listwise


def test_task_ranked_has_the_right_answer_and_distinct_wrong_ones() -> None:
    task = make_task("arithmetic", {})
    verify = task.reward_fn()
    seen_wrong: list[str] = []
    right_positions = set()
    for index in range(40):
        example = task_ranked(task, index, seed=0, k=4)
        pair = task_pair(task, index, seed=0)
        assert example.prompt == pair.prompt and len(example.completions) == 4
        assert len(set(example.completions)) == 4
        assert sorted(example.scores) == [0.0, 0.0, 0.0, 1.0]
        gold = verify([example.prompt] * 4, list(example.completions), answer=[pair.chosen] * 4)
        assert gold == list(example.scores)  # score 1 exactly for the right answer
        right_positions.add(example.scores.index(1.0))
        seen_wrong += [c for c, s in zip(example.completions, example.scores) if s == 0.0]
    assert right_positions == {0, 1, 2, 3}  # the order is shuffled
    assert len(set(seen_wrong)) > 60  # other problems' answers, not one repeated filler
    assert task_ranked(task, 5, seed=0, k=4) == task_ranked(task, 5, seed=0, k=4)
    assert task_ranked(task, 5, seed=1, k=4) != task_ranked(task, 5, seed=0, k=4)


def test_task_ranked_wrong_answers_stay_distinct_in_a_tiny_answer_space() -> None:
    class SameAnswer(Task):
        name = "same-answer"

        def sample(self, rng: random.Random) -> Problem:
            return Problem(f"q{rng.randint(0, 999)}=", "7")

    example = task_ranked(SameAnswer(), 0, seed=0, k=4)
    right = example.completions[example.scores.index(1.0)]
    assert right == "7"
    assert sorted(example.completions) == ["7", "77", "777", "7777"]


def test_task_ranked_needs_two_completions() -> None:
    with pytest.raises(ValueError, match="k must be at least 2"):
        task_ranked(make_task("arithmetic", {}), 0, seed=0, k=1)
