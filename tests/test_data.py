"""Dataset loading: formats, row checks and their messages, skipping, rendering prompts."""

from __future__ import annotations

import json

import pytest

from rewardlab.data.datasets import SKIP_HINT, load_rows, render_completion, render_prompt
from rewardlab.errors import DataError

PROMPT_ROW = {"prompt": "What is 2+2?", "answer": "4", "meta": {"level": 1, "tags": ["a"]}}
MESSAGES_ROW = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3+3?"},
    ],
    "answer": "6",
}
SFT_PROMPT_ROW = {"prompt": "2+2=", "completion": "4", "id": 7}
SFT_MESSAGES_ROW = {
    "messages": [
        {"role": "user", "content": "3+3="},
        {"role": "assistant", "content": "6"},
    ],
    "id": 8,
}


def write_jsonl(path, rows):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Like pandas or datasets would write them: every row has every column (null when absent).
    # (pa.Table.from_pylist alone would take the columns from the first row only.)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)
    return path


def data_error(path, **kwargs) -> str:
    kwargs.setdefault("kind", "prompt")
    with pytest.raises(DataError) as err:
        load_rows(path, **kwargs)
    return str(err.value)


# --------------------------------------------------------------------------- good files


def test_jsonl_prompt_and_messages_rows_keep_extra_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [PROMPT_ROW, "", "   ", MESSAGES_ROW])
    loaded = load_rows(path, kind="prompt", required_columns=["answer"])
    assert loaded.rows == [PROMPT_ROW, MESSAGES_ROW]  # blank lines are skipped, not errors
    assert loaded.skipped == []
    assert loaded.source == str(path)


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PROMPT_ROW).encode() + b"\n")
    assert load_rows(path, kind="prompt").rows == [PROMPT_ROW]


def test_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([PROMPT_ROW, MESSAGES_ROW]))
    assert load_rows(path, kind="prompt").rows == [PROMPT_ROW, MESSAGES_ROW]


def test_sft_rows_load(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [SFT_PROMPT_ROW, SFT_MESSAGES_ROW])
    loaded = load_rows(path, kind="sft")
    assert loaded.rows == [SFT_PROMPT_ROW, SFT_MESSAGES_ROW]
    assert [render_completion(r, None) for r in loaded.rows] == ["4", "6"]


def test_parquet_mixed_prompt_and_messages_rows(tmp_path):
    # Columnar storage fills a column a row lacks with null: a messages row gets prompt=None
    # and a prompt row gets messages=None. Null counts as absent, so both rows are valid.
    path = write_parquet(tmp_path / "p.parquet", [PROMPT_ROW, MESSAGES_ROW])
    rows = load_rows(path, kind="prompt", required_columns=["answer"]).rows
    assert len(rows) == 2
    assert rows[0]["prompt"] == PROMPT_ROW["prompt"] and rows[0]["messages"] is None
    assert rows[0]["meta"] == {"level": 1, "tags": ["a"]}  # extra (nested) columns kept
    assert rows[1]["prompt"] is None and rows[1]["answer"] == "6"
    assert [m["content"] for m in rows[1]["messages"]] == ["Be brief.", "What is 3+3?"]


def test_parquet_bad_row_names_the_row(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"prompt": "a"}, {"prompt": ""}])
    msg = data_error(path)
    assert msg.startswith(f"{path}, row 2: field 'prompt' is empty")


def test_save_to_disk_dataset_folder(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list([PROMPT_ROW, {**PROMPT_ROW, "prompt": "1+1?"}]).save_to_disk(
        str(folder)
    )
    rows = load_rows(folder, kind="prompt", required_columns=["answer"]).rows
    assert [r["prompt"] for r in rows] == ["What is 2+2?", "1+1?"]
    assert rows[0]["meta"] == PROMPT_ROW["meta"]


def test_save_to_disk_dataset_dict_splits(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}]),
            "test": datasets.Dataset.from_list(
                [{"prompt": "b", "answer": "2"}, {"prompt": "c", "answer": "3"}]
            ),
            "bad": datasets.Dataset.from_list(
                [{"prompt": "b", "answer": "2"}, {"prompt": " ", "answer": "3"}]
            ),
        }
    ).save_to_disk(str(folder))
    assert [r["prompt"] for r in load_rows(folder, kind="prompt").rows] == ["a"]  # default train
    assert [r["prompt"] for r in load_rows(folder, kind="prompt", split="test").rows] == ["b", "c"]

    msg = data_error(folder, split="validation")
    assert f"dataset folder {folder} has no split 'validation'" in msg
    assert "its splits are bad, test, train" in msg and "data.split" in msg
    msg = data_error(folder, split="validation", split_key="data.eval_split")
    assert "so set data.eval_split to one of them" in msg

    msg = data_error(folder, split="bad")
    assert msg.startswith(f"{folder} (split 'bad'), row 2: field 'prompt' is empty")


# --------------------------------------------------------------------------- bad rows
#
# Each case: rows of a JSONL file where line 2 is bad (line 1 is always good), and the text the
# message must contain after "<file>, line 2: " (the field, what is wrong).

BAD_PROMPT_ROWS = {
    "invalid_json": ('{"prompt": "x",', "invalid JSON ("),
    "not_an_object": ('["prompt", "x"]', "expected a JSON object but found a list"),
    "missing_prompt": (
        {"question": "x"},
        "the row needs a 'prompt' string or a 'messages' list, but its fields are 'question'",
    ),
    "misspelled_prompt": ({"promt": "x"}, "'promt' looks like a misspelling of 'prompt'"),
    "null_prompt": ({"prompt": None, "answer": 1}, "its fields are 'answer', 'prompt'"),
    "empty_prompt": ({"prompt": ""}, "field 'prompt' is empty"),
    "blank_prompt": ({"prompt": " \n\t"}, "field 'prompt' is empty"),
    "prompt_not_string": (
        {"prompt": 3},
        "field 'prompt' must be a string but is a number",
    ),
    "prompt_is_chat_list": (
        {"prompt": [{"role": "user", "content": "x"}]},
        "field 'prompt' must be a string but is a list; for chat data use a 'messages' list",
    ),
    "both_prompt_and_messages": (
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
        "the row has both 'prompt' and 'messages'",
    ),
    "bad_role": (
        {"messages": [{"role": "system", "content": "s"}, {"role": "usr", "content": "x"}]},
        (
            "field 'messages[1].role' is 'usr', which is not one of system, user, assistant, tool "
            "(did you mean 'user'?)"
        ),
    ),
    "sharegpt": (
        {"messages": [{"from": "human", "value": "x"}]},
        "field 'messages[0]' uses 'from'/'value' (ShareGPT style); rename them to 'role'/'content'",
    ),
    "messages_not_list": (
        {"messages": "hi"},
        "field 'messages' must be a list of {role, content} objects but is a string",
    ),
    "messages_empty": ({"messages": []}, "field 'messages' is an empty list"),
    "message_not_object": (
        {"messages": ["hi"]},
        "field 'messages[0]' must be an object with 'role' and 'content' but is a string",
    ),
    "role_missing": ({"messages": [{"content": "x"}]}, "field 'messages[0].role' is missing"),
    "content_missing": ({"messages": [{"role": "user"}]}, "field 'messages[0].content' is missing"),
    "content_not_string": (
        {"messages": [{"role": "user", "content": ["x"]}]},
        "field 'messages[0].content' must be a string but is a list",
    ),
    "only_assistant": (
        {"messages": [{"role": "assistant", "content": "x"}]},
        "field 'messages' holds only an assistant message, so there is no prompt",
    ),
}

BAD_SFT_ROWS = {
    "no_completion": (
        {"prompt": "x"},
        "field 'completion' is missing; SFT rows with a 'prompt' need a 'completion'",
    ),
    "no_prompt": (
        {"completion": "x"},
        "field 'prompt' is missing; SFT rows with a 'completion' need a 'prompt' string",
    ),
    "empty_completion": ({"prompt": "x", "completion": ""}, "field 'completion' is empty"),
    "completion_not_string": (
        {"prompt": "x", "completion": 4},
        "field 'completion' must be a string but is a number",
    ),
    "prompt_not_string": (
        {"prompt": ["x"], "completion": "y"},
        "field 'prompt' must be a string but is a list",
    ),
    "messages_end_with_user": (
        {"messages": [{"role": "user", "content": "q"}]},
        "field 'messages[0].role' is 'user', but SFT rows must end with an assistant message",
    ),
    "messages_end_with_system": (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "system", "content": "s"},
            ]
        },
        "field 'messages[2].role' is 'system', but SFT rows must end with an assistant message",
    ),
    "empty_reply": (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
        "field 'messages[1].content' is empty, but it is the completion to learn",
    ),
    "only_reply": (
        {"messages": [{"role": "assistant", "content": "a"}]},
        "field 'messages' holds only the assistant reply, so there is no prompt",
    ),
    "bad_role": (
        {"messages": [{"role": "user", "content": "q"}, {"role": "asistant", "content": "a"}]},
        "(did you mean 'assistant'?)",
    ),
    "neither": (
        {"text": "x"},
        (
            "the row needs 'prompt' and 'completion' strings or a 'messages' list ending with an "
            "assistant message, but its fields are 'text'"
        ),
    ),
}


@pytest.mark.parametrize(("row", "expected"), BAD_PROMPT_ROWS.values(), ids=BAD_PROMPT_ROWS)
def test_bad_prompt_row_message_names_file_line_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "data.jsonl", [PROMPT_ROW, row, PROMPT_ROW])
    msg = data_error(path)
    assert msg.startswith(f"{path}, line 2: ")
    assert expected in msg
    assert msg.endswith(f"; {SKIP_HINT}.")


@pytest.mark.parametrize(("row", "expected"), BAD_SFT_ROWS.values(), ids=BAD_SFT_ROWS)
def test_bad_sft_row_message_names_file_line_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "sft.jsonl", [SFT_PROMPT_ROW, row])
    msg = data_error(path, kind="sft")
    assert msg.startswith(f"{path}, line 2: ")
    assert expected in msg
    assert "skip_bad_rows" in msg


def test_line_numbers_count_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [PROMPT_ROW, "", "", {"prompt": ""}])
    assert data_error(path).startswith(f"{path}, line 4: field 'prompt' is empty")


def test_invalid_utf8_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(PROMPT_ROW).encode() + b'\n{"prompt": "\xff"}\n')
    assert data_error(path).startswith(f"{path}, line 2: the line is not valid UTF-8 text")


def test_json_file_rows_are_numbered(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([PROMPT_ROW, PROMPT_ROW, 5]))
    assert data_error(path).startswith(f"{path}, row 3: expected an object but found a number")


def test_required_column_missing_or_null_in_one_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [PROMPT_ROW, {"prompt": "x"}])
    msg = data_error(path, required_columns=["answer"])
    assert msg.startswith(f"{path}, line 2: column 'answer' is missing")
    path = write_jsonl(tmp_path / "n.jsonl", [PROMPT_ROW, {"prompt": "x", "answer": None}])
    assert "line 2: column 'answer' is null" in data_error(path, required_columns=["answer"])


# --------------------------------------------------------------------------- skipping


def test_skip_bad_rows_returns_the_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [PROMPT_ROW, "{oops", {"prompt": ""}, MESSAGES_ROW, {"messages": [{"role": "usr"}]}],
    )
    loaded = load_rows(path, kind="prompt", skip_bad_rows=True)
    assert loaded.rows == [PROMPT_ROW, MESSAGES_ROW]
    assert len(loaded.skipped) == 3
    assert loaded.skipped[0].startswith(f"{path}, line 2: invalid JSON")
    assert loaded.skipped[1] == f"{path}, line 3: field 'prompt' is empty"
    assert loaded.skipped[2].startswith(f"{path}, line 5: field 'messages[0].role' is 'usr'")
    # Skipped messages are the row problems only, without the "set skip_bad_rows" hint.
    assert all(SKIP_HINT not in m for m in loaded.skipped)


def test_all_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"promt": "a"}, "[]"])
    msg = data_error(path, skip_bad_rows=True)
    assert msg.startswith(f"all 2 rows of {path} are bad, so there is nothing to use")
    assert f"(first problem: {path}, line 1: the row needs a 'prompt'" in msg


def test_required_column_missing_from_every_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "anwser": "1"}, {"prompt": "b"}])
    # Raised even when skipping bad rows: skipping every row would hide a schema mistake.
    msg = data_error(path, required_columns=["answer"], skip_bad_rows=True)
    assert f"no row of {path} has the column 'answer'" in msg
    assert "'anwser' looks like a misspelling of 'answer'" in msg
    assert "columns found: 'anwser', 'prompt'" in msg


# --------------------------------------------------------------------------- bad files


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt\nx\n")
    msg = data_error(path)
    assert f"dataset file {path} has an unsupported extension '.csv'" in msg
    assert ".jsonl, .json, .parquet" in msg and "save_to_disk" in msg


def test_missing_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.jsonl"
    msg = data_error(missing)
    assert msg == f"dataset path {missing} does not exist; check the path."
    monkeypatch.chdir(tmp_path)
    msg = data_error("rel/nope.jsonl")
    assert "dataset path rel/nope.jsonl does not exist" in msg
    assert f"relative paths start from {tmp_path}" in msg


def test_folder_that_is_not_a_dataset(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    msg = data_error(folder)
    assert f"dataset path {folder} is a folder but not one written by" in msg
    assert "save_to_disk" in msg
    write_jsonl(folder / "train.jsonl", [PROMPT_ROW])
    msg = data_error(folder)
    assert "point the data path at one of the files inside it (train.jsonl)" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    assert data_error(path) == f"{path} has no rows; add at least one row to it."


def test_bad_json_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(PROMPT_ROW) + "\n" + json.dumps(PROMPT_ROW) + "\n")
    msg = data_error(path)
    assert f"dataset file {path} is not valid JSON" in msg
    assert "rename the file to .jsonl" in msg  # one object per line in a .json file
    path.write_text(json.dumps(PROMPT_ROW))
    msg = data_error(path)
    assert "must hold a JSON list of row objects but holds an object" in msg


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    assert f"dataset file {path} could not be read as Parquet" in data_error(path)


def test_kind_is_checked():
    with pytest.raises(ValueError, match="kind must be 'prompt', 'sft' or 'pair'"):
        load_rows("whatever.jsonl", kind="chat")


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def tokenizer():
    from rewardlab.models.tiny import build_tokenizer

    return build_tokenizer()


def test_render_prompt_string_is_unchanged(tokenizer):
    assert render_prompt(PROMPT_ROW, tokenizer) == "What is 2+2?"


def test_render_prompt_uses_the_chat_template(tokenizer):
    assert tokenizer.chat_template  # the tiny tokenizer has one
    text = render_prompt(MESSAGES_ROW, tokenizer)
    assert text == "<|system|>Be brief.\n<|user|>What is 3+3?\n<|assistant|>"


def test_render_prompt_drops_the_final_assistant_message(tokenizer):
    # The SFT target (or a reference answer) is not part of the prompt.
    assert render_prompt(SFT_MESSAGES_ROW, tokenizer) == "<|user|>3+3=\n<|assistant|>"
    assert render_completion(SFT_MESSAGES_ROW, tokenizer) == "6"


def test_render_prompt_of_parquet_messages_row(tmp_path):
    # Parquet fills message keys that other messages have (e.g. 'name') with null; they must not
    # reach a template that tests `'name' in m`, or it would render "[None]".
    from rewardlab.models.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{% if 'name' in m %}[{{ m['name'] }}]{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    rows = [
        {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
        {"messages": [{"role": "user", "content": "yo"}]},
    ]
    path = write_parquet(tmp_path / "m.parquet", rows)
    loaded = load_rows(path, kind="prompt").rows
    assert loaded[1]["messages"][0] == {"role": "user", "content": "yo", "name": None}
    assert render_prompt(loaded[0], tok) == "<user>[bob]hi"
    assert render_prompt(loaded[1], tok) == "<user>yo"


def test_render_prompt_without_chat_template(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    assert not plain.chat_template
    with pytest.raises(DataError, match="tokenizer has no chat template"):
        render_prompt(MESSAGES_ROW, plain)
    assert render_prompt(PROMPT_ROW, plain) == "What is 2+2?"  # plain prompts still work


def test_render_unvalidated_rows_raise_data_error(tokenizer):
    with pytest.raises(DataError, match="neither 'prompt' nor 'messages'"):
        render_prompt({"text": "x"}, tokenizer)
    with pytest.raises(DataError, match="do not end with an assistant message"):
        render_completion({"messages": [{"role": "user", "content": "x"}]}, tokenizer)


def test_a_task_with_eval_path_trains_on_the_task_and_evaluates_on_the_file(tmp_path, tokenizer):
    from rewardlab.config import DataConfig
    from rewardlab.data.prompts import prompt_source

    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(5)])
    data = DataConfig(task="arithmetic", eval_path=str(evals), heldout_size=3)
    source = prompt_source(data, tokenizer, seed=0)
    assert [row["prompt"] for row in source.heldout_rows] == ["0+1=", "1+1=", "2+1="]
    assert source.task is not None and source.rows_from(0, 1)[0]["prompt"] != "0+1="  # the task's stream
    without = prompt_source(DataConfig(task="arithmetic", heldout_size=3), tokenizer, seed=0)
    assert [row["prompt"] for row in without.heldout_rows] != ["0+1=", "1+1=", "2+1="]


def test_sft_evaluation_and_eval_from_a_run_folder_keep_a_tasks_eval_file(tmp_path, tokenizer):
    """The SFT evaluator and ``rewardlab eval <run>`` read the same held-out rows as training
    did: a task's eval file (with the task's verifier), not the task's own held-out set."""
    from rewardlab.config import SFTConfig, dump_config
    from rewardlab.models.tiny import build_model
    from rewardlab.trainers.common import CONFIG_FILE, FINAL_MODEL, run_config_of_folder
    from rewardlab.trainers.sft import _evaluator

    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(4)])
    config = SFTConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"task": "arithmetic", "eval_path": str(evals), "heldout_size": 2},
            "rollout": {"max_new_tokens": 2},
            "eval": {"num_samples": 1, "pass_k": 1},
            "logging": {"samples": 2},
        }
    )
    run = _evaluator(config, tokenizer, tmp_path / "run")
    assert run is not None
    run(build_model(len(tokenizer)), 0)
    saved = (tmp_path / "run" / "samples" / "step-000000.jsonl").read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in saved] == ["0+1=", "1+1="]

    (tmp_path / "run" / FINAL_MODEL).mkdir()
    (tmp_path / "run" / FINAL_MODEL / "config.json").write_text("{}")
    dump_config(config, tmp_path / "run" / CONFIG_FILE)
    again = run_config_of_folder(tmp_path / "run", [])
    assert (again.data.task, again.data.eval_path) == ("arithmetic", str(evals))
