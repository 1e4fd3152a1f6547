"""docs/errors.md, checked: every entry of the catalogue of bad input is provoked here the way
a user meets it (the ``rewardlab`` command), and each test asserts

* the exit status 2 and one ``error:`` line, no traceback;
* the message the doc gives for the entry (its ``<placeholders>`` match anything), plus what
  the message must name (file, row, key) and say to do;
* that nothing the user had changed: data, configs, model folders and run folders are
  byte-identical afterwards, and a failed start leaves no new run folder.

Test names carry the entry's id (``test_E07_...``); ``test_the_doc_and_the_tests_list_the_same_entries``
checks that the doc and this file list the same ids.

The command runs in-process (``rewardlab.cli.main`` with ``sys.argv`` set, the consoles writing
to buffers wide enough that no line wraps), which is what the installed script calls;
``test_the_installed_command_prints_the_same_message`` runs the real script once to show that
it prints the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "errors.md"

# A run small enough to start (and, where it gets that far, finish) in about a second.
TINY = [
    "train.steps=1", "train.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=2",
    "data.heldout_size=2", "eval.every=0", "eval.pass_k=1", "logging.samples=0",
]  # fmt: skip


def sets(*assignments: str) -> list[str]:
    """``--set`` options for ``assignments`` (``key=value`` each)."""
    return [arg for a in assignments for arg in ("--set", a)]


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str

    @property
    def message(self) -> str:
        """Everything printed, whitespace collapsed (rich may break a long line)."""
        return " ".join((self.out + self.err).split())


def rewardlab(*args: str) -> Outcome:
    """Run ``rewardlab ARGS`` in-process as the installed script does (``rewardlab.cli:main``)."""
    from rich.console import Console

    from rewardlab import cli

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "console", Console(file=out, width=100_000, color_system=None))
        patch.setattr(cli, "err_console", Console(file=err, width=100_000, color_system=None))
        patch.setattr(sys, "argv", ["rewardlab", *args])
        try:
            cli.main()
            code: int | str = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # noqa: BLE001 - what a user would see: the traceback
            err.write(traceback.format_exc())
            code = "uncaught exception"
    return Outcome(code, out.getvalue(), err.getvalue())


def _doc_messages() -> dict[str, list[str]]:
    """Entry id -> the messages the doc gives (the ``error: ...`` code spans of its
    "rewardlab says" item: the message, and any variant)."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, list[str]] = {}
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        entry = re.match(r"(E\d\d)\b", section)
        says = re.search(
            r"\*\*rewardlab says:\*\*(.*?)\*\*What to do:\*\*", section, flags=re.DOTALL
        )
        if entry and says:
            found[entry.group(1)] = re.findall(r"`(error: [^`]+)`", says.group(1))
    return found


def doc_patterns(entry: str) -> list[str]:
    """The doc's messages for ``entry`` as regexes: ``<anything>`` placeholders match any text."""
    return [
        ".*?".join(
            re.escape(" ".join(p.split()) if p.strip() else p) for p in re.split(r"<[^<>]+>", text)
        )
        for text in _doc_messages()[entry]
    ]


def expect(entry: str, outcome: Outcome, *fragments: str) -> None:
    """The user saw one clear message for ``entry``: exit 2, no traceback, the doc's message
    and each fragment (a file, row or key it must name; what to do)."""
    message = outcome.message
    assert "Traceback" not in outcome.out + outcome.err, outcome.err
    assert outcome.code == 2, (outcome.code, message[-3000:])
    assert message.count("error: ") == 1, message
    matches = [p for p in doc_patterns(entry) if re.search(p, message)]
    assert matches, f"{entry}: no message of the doc is what rewardlab prints:\n{message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under ``roots``."""
    found: dict[str, bytes | None] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


@pytest.fixture
def untouched(tmp_path: Path):
    """Assert after the test that nothing under ``tmp_path`` (the user's data, configs, model
    and run folders) was changed, added or removed. Set up files before asking for it."""

    class Check:
        def __init__(self) -> None:
            self.before: dict[str, bytes | None] | None = None

        def __call__(self) -> None:
            self.before = snapshot(tmp_path)

    check = Check()
    yield check
    assert check.before is not None, "call untouched() once the user's files are in place"
    after = snapshot(tmp_path)
    assert sorted(after) == sorted(check.before), "files were added or removed"
    changed = [p for p in after if after[p] != check.before[p]]
    assert not changed, f"changed: {changed}"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_on(data: Path, run: Path, *more: str) -> Outcome:
    """``rewardlab train`` on a prompt dataset with an exact_match reward."""
    return rewardlab(
        "train",
        *sets(*TINY, f"data.path={data}", "rewards=[{name: exact_match}]", f"run_dir={run}", *more),
    )


def tiny_model(folder: Path) -> Path:
    """The built-in tiny model saved as a plain local model folder (as a user's would be)."""
    from rewardlab.models.tiny import write_tiny

    with contextlib.redirect_stderr(io.StringIO()):  # no "Writing model shards" bar
        return write_tiny(folder)


GOOD_ROWS = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny RL run: config.yaml, metrics, checkpoints step-000001 and -000002, final/."""
    run = tmp_path_factory.mktemp("finished") / "run"
    done = rewardlab("train", *sets(*TINY, "train.steps=2", "checkpoint.every=1", f"run_dir={run}"))
    assert done.code == 0, done.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    return run


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """The user's own copy of the finished run (each test may break it)."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# --------------------------------------------------------------------------- the doc


def test_the_doc_and_the_tests_list_the_same_entries() -> None:
    text = DOC.read_text(encoding="utf-8")
    in_doc = re.findall(r"^### (E\d\d)\b", text, flags=re.MULTILINE)
    assert len(in_doc) == len(set(in_doc)) >= 25, "ids are unique and there are at least 25 entries"
    assert in_doc == sorted(in_doc)
    tested = {m.group(1) for name in globals() if (m := re.match(r"test_(E\d\d)_", name))}
    assert set(in_doc) == tested, (
        f"in the doc only: {set(in_doc) - tested}; tested only: {tested - set(in_doc)}"
    )
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        if re.match(r"E\d\d\b", section):
            for part in ("**You did:**", "**rewardlab says:**", "**What to do:**"):
                assert part in section, f"{section.splitlines()[0]}: no {part}"
    messages = _doc_messages()
    assert set(messages) == set(in_doc) and all(messages.values()), "each entry gives its message"
    assert "## Safe by default" in text


def test_the_installed_command_prints_the_same_message(tmp_path: Path) -> None:
    """The real script (a subprocess): one red line on stderr, exit 2, the same text."""
    script = Path(sys.executable).parent / "rewardlab"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "rewardlab.cli"]
    args = ["train", "--set", "train.step=3"]
    env = dict(os.environ, COLUMNS="500")
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [rewardlab(*args).err.strip()]


# --------------------------------------------------------------------------- config files and --set


def test_E01_malformed_yaml(tmp_path: Path, untouched) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  steps: [1, 2\n")
    untouched()
    expect("E01", rewardlab("train", str(config)), str(config), "line 2, column 10")


def test_E02_config_file_not_found(tmp_path: Path, untouched) -> None:
    untouched()
    expect("E02", rewardlab("train", str(tmp_path / "rn.yaml")), "rn.yaml")


def test_E03_unknown_key_with_did_you_mean(tmp_path: Path, untouched) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  step: 3\n")
    untouched()
    expect(
        "E03",
        rewardlab("train", str(config)),
        str(config),
        "'train.step'",
        "did you mean 'train.steps'?",
    )
    expect("E03", rewardlab("train", "--set", "train.lr=1e-4"), "did you mean 'train.optim.lr'?")


def test_E04_wrong_type(tmp_path: Path, untouched) -> None:
    untouched()
    expect(
        "E04",
        rewardlab("train", "--set", "train.steps=abc"),
        "'train.steps'",
        "valid integer",
        "(got 'abc')",
    )


def test_E05_set_without_key_value(tmp_path: Path, untouched) -> None:
    untouched()
    expect("E05", rewardlab("train", "--set", "train.steps"), "'train.steps'", "KEY=VALUE")
    expect(
        "E05", rewardlab("train", "--set", "train.steps=[1"), "--set train.steps", "not valid YAML"
    )


def test_E06_negative_learning_rate(tmp_path: Path, untouched) -> None:
    untouched()
    expect(
        "E06",
        rewardlab("train", "--set", "train.optim.lr=-1e-4"),
        "'train.optim.lr'",
        "greater than 0",
    )


def test_E07_inverted_clip_range(tmp_path: Path, untouched) -> None:
    run = tmp_path / "run"
    untouched()
    got = rewardlab(
        "train", *sets(*TINY, "algorithm.policy_loss.params.clip_high=-0.5", f"run_dir={run}")
    )
    expect("E07", got, "algorithm.policy_loss.params.clip_high", "-0.5")


def test_E08_one_completion_per_prompt_with_a_group_estimator(tmp_path: Path, untouched) -> None:
    run = tmp_path / "run"
    untouched()
    got = rewardlab("train", *sets(*TINY, "rollout.num_generations=1", f"run_dir={run}"))
    expect("E08", got, "rollout.num_generations", "'grpo'", "at least 2")


def test_E09_mini_batch_does_not_divide_the_batch(tmp_path: Path, untouched) -> None:
    run = tmp_path / "run"
    untouched()
    got = rewardlab(
        "train",
        *sets(
            *TINY,
            "train.prompts_per_step=3",
            "train.mini_batch_size=4",
            "train.ppo_epochs=2",
            f"run_dir={run}",
        ),
    )
    expect("E09", got, "train.mini_batch_size", "6 completions")


def test_E10_unknown_recipe(tmp_path: Path, untouched) -> None:
    untouched()
    expect(
        "E10",
        rewardlab("train", "--set", "algorithm.recipe=grpoo"),
        "did you mean 'grpo'?",
        "dr_grpo",
    )


def test_E11_unknown_algorithm_component(tmp_path: Path, untouched) -> None:
    untouched()
    expect(
        "E11", rewardlab("train", "--set", "algorithm.advantage.name=rlooo"), "did you mean 'rloo'?"
    )
    expect(
        "E11", rewardlab("train", "--set", "algorithm.policy_loss.name=ppo_clipp"), "policy_loss"
    )


def test_E12_unknown_builtin_task(tmp_path: Path, untouched) -> None:
    run = tmp_path / "run"
    untouched()
    expect(
        "E12",
        rewardlab("train", *sets(*TINY, "data.task=arith", f"run_dir={run}")),
        "did you mean 'arithmetic'?",
    )


# --------------------------------------------------------------------------- dataset files and rows


def test_E13_data_file_not_found(tmp_path: Path, untouched) -> None:
    untouched()
    expect(
        "E13",
        train_on(tmp_path / "prompts.jsonl", tmp_path / "run"),
        str(tmp_path / "prompts.jsonl"),
    )


def test_E14_empty_data_file(tmp_path: Path, untouched) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n\n")
    untouched()
    expect("E14", train_on(data, tmp_path / "run"), str(data))


def test_E15_unsupported_data_format(tmp_path: Path, untouched) -> None:
    data = tmp_path / "prompts.csv"
    data.write_text("prompt,answer\n1+1=,2\n")
    untouched()
    expect("E15", train_on(data, tmp_path / "run"), str(data), "'.csv'", ".jsonl")


def test_E16_row_without_the_prompt_field(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", [GOOD_ROWS[0], {"promt": "2+2=", "answer": "4"}])
    untouched()
    expect(
        "E16",
        train_on(data, tmp_path / "run"),
        f"{data}, line 2",
        "'promt' looks like a misspelling of 'prompt'",
    )


def test_E17_field_of_the_wrong_type(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", [GOOD_ROWS[0], {"prompt": 22, "answer": "4"}])
    untouched()
    expect("E17", train_on(data, tmp_path / "run"), f"{data}, line 2", "'prompt'", "a number")


def test_E18_invalid_json_line(tmp_path: Path, untouched) -> None:
    data = write_jsonl(
        tmp_path / "prompts.jsonl", [GOOD_ROWS[0], '{"prompt": "2+2=", "answer": "4"']
    )
    untouched()
    expect("E18", train_on(data, tmp_path / "run"), f"{data}, line 2", "skip_bad_rows")


def test_E19_invalid_utf8(tmp_path: Path, untouched) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=\xff", "answer": "4"}\n')
    untouched()
    expect("E19", train_on(data, tmp_path / "run"), f"{data}, line 2")


def test_E20_empty_prompt(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", [GOOD_ROWS[0], {"prompt": "  ", "answer": "4"}])
    untouched()
    expect("E20", train_on(data, tmp_path / "run"), f"{data}, line 2")


def test_E21_column_a_reward_needs_is_missing(tmp_path: Path, untouched) -> None:
    in_one = write_jsonl(tmp_path / "one.jsonl", [GOOD_ROWS[0], {"prompt": "2+2="}])
    in_none = write_jsonl(tmp_path / "none.jsonl", [{"prompt": "1+1="}, {"prompt": "2+2="}])
    untouched()
    expect("E21", train_on(in_one, tmp_path / "run"), f"{in_one}, line 2", "'answer'")
    expect(
        "E21", train_on(in_none, tmp_path / "run"), f"no row of {in_none} has the column 'answer'"
    )


def test_E22_every_row_is_bad_when_skipping_bad_rows(tmp_path: Path, untouched) -> None:
    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": "", "answer": "2"}, {"prompt": 3, "answer": "4"}]
    )
    untouched()
    expect(
        "E22",
        train_on(data, tmp_path / "run", "data.skip_bad_rows=true"),
        f"all 2 rows of {data}",
        "line 1",
    )


def test_E23_prompt_longer_than_the_models_context(tmp_path: Path, untouched) -> None:
    long = "1+" * 200 + "1="  # 402 bytes: the tiny model's context is 256 tokens (one per byte)
    data = write_jsonl(
        tmp_path / "prompts.jsonl", [GOOD_ROWS[0], {"prompt": long, "answer": "201"}]
    )
    untouched()
    expect(
        "E23", train_on(data, tmp_path / "run"), f"{data}, line 2", "402 tokens", "holds 256 tokens"
    )
    # With skip_bad_rows the long row is left out, counted, and the run goes on.
    skipped = train_on(data, tmp_path / "skipping", "data.skip_bad_rows=true")
    assert skipped.code == 0 and "skipped 1 bad dataset rows" in skipped.message
    shutil.rmtree(tmp_path / "skipping")


def test_E24_sft_or_preference_example_longer_than_the_models_context(tmp_path: Path, untouched) -> None:
    data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": "1+1=", "completion": "2"}, {"prompt": "x=", "completion": "9" * 300}],
    )
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "1+2=", "chosen": "3", "rejected": "4" * 300}],
    )
    run = tmp_path / "run"
    untouched()
    got = rewardlab(
        "sft", *sets(f"data.path={data}", f"run_dir={run}", "train.epochs=1", "eval.pass_k=1")
    )
    expect("E24", got, f"{data}, line 2", "303 tokens", "holds 256 tokens")
    got = rewardlab(
        "train",
        *sets(
            f"data.path={pairs}", f"run_dir={run}", "preference.losses=[{name: dpo}]",
            "rewards=[{name: exact_match}]", "train.epochs=1",
        ),
    )
    expect("E24", got, f"{pairs}, line 2", "the prompt and 'rejected' are", "holds 256 tokens")


# --------------------------------------------------------------------------- model folders


def test_E25_model_path_does_not_exist(tmp_path: Path, untouched) -> None:
    untouched()
    got = rewardlab(
        "train", *sets(*TINY, f"model.name={tmp_path / 'my-model'}", f"run_dir={tmp_path / 'run'}")
    )
    expect("E25", got, str(tmp_path / "my-model"))


def test_E26_model_folder_without_config_json(tmp_path: Path, untouched) -> None:
    model = tiny_model(tmp_path / "my-model")
    (model / "config.json").unlink()
    untouched()
    got = rewardlab("train", *sets(*TINY, f"model.name={model}", f"run_dir={tmp_path / 'run'}"))
    expect("E26", got, str(model))


def test_E27_model_folder_without_weights(tmp_path: Path, untouched) -> None:
    model = tiny_model(tmp_path / "my-model")
    (model / "model.safetensors").unlink()
    untouched()
    got = rewardlab("train", *sets(*TINY, f"model.name={model}", f"run_dir={tmp_path / 'run'}"))
    expect("E27", got, str(model), "model.safetensors")


def test_E28_model_weights_only_as_a_pickle(tmp_path: Path, untouched) -> None:
    import torch
    from safetensors.torch import load_file

    model = tiny_model(tmp_path / "my-model")
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    untouched()
    got = rewardlab("train", *sets(*TINY, f"model.name={model}", f"run_dir={tmp_path / 'run'}"))
    expect("E28", got, str(model), "pytorch_model.bin", "safe_serialization=True")


def test_E29_model_folder_without_tokenizer_files(tmp_path: Path, untouched) -> None:
    model = tiny_model(tmp_path / "my-model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    untouched()
    got = rewardlab("train", *sets(*TINY, f"model.name={model}", f"run_dir={tmp_path / 'run'}"))
    expect("E29", got, str(model), "tokenizer.json")


def test_E30_tokenizer_without_eos_or_pad(tmp_path: Path, untouched) -> None:
    model = tiny_model(tmp_path / "my-model")
    settings = json.loads((model / "tokenizer_config.json").read_text())
    del settings["pad_token"], settings["eos_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    untouched()
    got = rewardlab("train", *sets(*TINY, f"model.name={model}", f"run_dir={tmp_path / 'run'}"))
    expect("E30", got, str(model / "tokenizer_config.json"), "eos_token")


def test_E30_only_a_missing_pad_token_is_fine_eos_pads(tmp_path: Path) -> None:
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    model = tiny_model(tmp_path / "my-model")
    settings = json.loads((model / "tokenizer_config.json").read_text())
    del settings["pad_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    _, tokenizer = load_policy(ModelConfig(name=str(model)))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_E31_lora_target_modules_not_in_the_model(tmp_path: Path, untouched) -> None:
    untouched()
    got = rewardlab(
        "train",
        *sets(*TINY, "model.lora={r: 2, target_modules: [c_attn]}", f"run_dir={tmp_path / 'run'}"),
    )
    expect("E31", got, "'c_attn'", "q_proj", "all-linear")


# --------------------------------------------------------------------------- rewards


@pytest.fixture
def user_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's reward module on the path (a name unique to the test, as imports are cached)."""
    name = f"my_rewards_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "def has_answer(prompts, completions, answer, **columns):\n"
        "    return [float(a in c) for c, a in zip(completions, answer)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_E32_reward_module_not_importable(tmp_path: Path, untouched, user_rewards: str) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    untouched()
    got = train_on(data, tmp_path / "run", "rewards=[{name: 'my_rewardz:has_answer'}]")
    expect("E32", got, "rewards[0].name", "'my_rewardz'", "PYTHONPATH")


def test_E33_reward_function_not_in_the_module(
    tmp_path: Path, untouched, user_rewards: str
) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    untouched()
    got = train_on(data, tmp_path / "run", f"rewards=[{{name: '{user_rewards}:has_anser'}}]")
    expect("E33", got, "rewards[0].name", "'has_anser'", "did you mean 'has_answer'?")


def test_E34_unknown_builtin_reward(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    untouched()
    got = train_on(data, tmp_path / "run", "rewards=[{name: exact_mach}]")
    expect("E34", got, "did you mean 'exact_match'?", "module:function")


def test_E35_unknown_reward_arg(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    untouched()
    got = train_on(data, tmp_path / "run", "rewards=[{name: exact_match, args: {colum: answer}}]")
    expect("E35", got, "rewards[0].args.colum", "did you mean 'column'?")


def test_E36_task_reward_on_a_dataset(tmp_path: Path, untouched) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    untouched()
    got = train_on(data, tmp_path / "run", "rewards=[{name: task}]")
    expect("E36", got, "rewards[0].name", "exact_match")


def test_E37_judge_api_key_variable_not_set(
    tmp_path: Path, untouched, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RL_CATALOGUE_JUDGE_KEY", raising=False)
    data = write_jsonl(tmp_path / "prompts.jsonl", GOOD_ROWS)
    judge = "{name: llm_judge, args: {endpoint: 'http://127.0.0.1:9/v1', model: m, api_key_env: RL_CATALOGUE_JUDGE_KEY}}"
    untouched()
    expect("E37", train_on(data, tmp_path / "run", f"rewards=[{judge}]"), "RL_CATALOGUE_JUDGE_KEY")


# --------------------------------------------------------------------------- run folders and resuming


def test_E38_run_folder_that_holds_a_run(run_copy: Path, untouched) -> None:
    untouched()
    got = rewardlab("train", *sets(*TINY, f"run_dir={run_copy}"))
    expect("E38", got, f"rewardlab train --resume {run_copy}", "--set run_dir=")
    # Each command offers its own --resume; resuming another command's run is refused.
    got = rewardlab("sft", *sets(f"run_dir={run_copy}"))
    expect("E38", got, f"rewardlab sft --resume {run_copy}")
    got = rewardlab("sft", "--resume", str(run_copy))
    expect("E42", got, f"this is a rewardlab train run; continue it with rewardlab train --resume {run_copy}")


def test_E39_run_folder_that_holds_other_files(tmp_path: Path, untouched) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("my notes\n")
    (project / "metrics.jsonl").write_text('{"mine": 1}\n')
    untouched()
    expect(
        "E39",
        rewardlab("train", *sets(*TINY, f"run_dir={project}")),
        str(project),
        "no config.yaml",
    )
    expect("E39", rewardlab("train", *sets(*TINY, f"run_dir={project / 'notes.md'}")), "is a file")


def test_E40_resume_with_a_changed_config(run_copy: Path, untouched) -> None:
    untouched()
    got = rewardlab("train", "--resume", str(run_copy), "--set", "train.optim.lr=1e-3")
    expect("E40", got, "train.optim.lr (0.0005 -> 0.001)")
    got = rewardlab(
        "train", str(run_copy / "config.yaml"), "--resume", str(run_copy), "--set", "seed=3"
    )
    expect("E40", got, "seed (0 -> 3)")


def test_E41_resume_a_run_without_a_checkpoint(tmp_path: Path, run_copy: Path, untouched) -> None:
    crashed = tmp_path / "crashed"  # a run that stopped before its first checkpoint
    crashed.mkdir()
    shutil.copy(run_copy / "config.yaml", crashed / "config.yaml")
    (crashed / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.0}\n')
    untouched()
    expect("E41", rewardlab("train", "--resume", str(crashed)), str(crashed / "checkpoints"))


def test_E42_resume_a_folder_that_is_not_a_run(tmp_path: Path, untouched) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "prompts.jsonl", GOOD_ROWS)
    untouched()
    expect("E42", rewardlab("train", "--resume", str(folder)), f"--resume {folder}")


def test_E43_truncated_checkpoint_weights(run_copy: Path, untouched) -> None:
    weights = run_copy / "checkpoints" / "step-000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    untouched()
    got = rewardlab("train", "--resume", str(run_copy), "--set", "train.steps=3")
    expect("E43", got, str(weights), "step-000001")


def test_E44_truncated_trainer_state(run_copy: Path, untouched) -> None:
    state = run_copy / "checkpoints" / "step-000002" / "trainer.pt"
    state.write_bytes(state.read_bytes()[:1000])
    shutil.rmtree(run_copy / "checkpoints" / "step-000001")  # no older checkpoint to fall back on
    untouched()
    got = rewardlab("train", "--resume", str(run_copy), "--set", "train.steps=3")
    expect("E44", got, str(state), "new run_dir")


def test_E45_evaluate_a_run_without_a_final_model(run_copy: Path, untouched) -> None:
    shutil.rmtree(run_copy / "final")  # a run still training
    untouched()
    expect("E45", rewardlab("eval", str(run_copy)), str(run_copy), "--model")
