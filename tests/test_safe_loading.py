"""Safe by default (docs/errors.md): files a user did not write cannot run code when rewardlab
reads them, and a judge's API key never reaches a run folder.

* every ``torch.load`` in the source is ``weights_only=True``; nothing else unpickles;
* weights are read from safetensors: a model folder or checkpoint with only a pickle is
  refused, and the pickle is never run;
* ``trust_remote_code`` is never passed (and is not a config key);
* configs are read with a safe YAML loader;
* a judge key given through its environment variable is in no file of the run.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardlab.errors import ConfigError, RewardlabError

SRC = Path(__file__).parent.parent / "src" / "rewardlab"


def _calls(name: str) -> Iterator[tuple[Path, ast.Call]]:
    """Every call in src whose function is ``<anything>.name`` or ``name``."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path, node


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a constant>"
    return "<absent>"


class RunsCode:
    """Pickles to a call of ``Path.touch(marker)``: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# --------------------------------------------------------------------------- torch.load / pickle


def test_every_torch_load_in_src_is_weights_only() -> None:
    loads = [(path, call) for path, call in _calls("load") if isinstance(call.func, ast.Attribute)
             and isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"]  # fmt: skip
    text = "".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    # Each textual `torch.load(` is a call the AST walk found (no alias or getattr hides one).
    assert len(loads) == len(re.findall(r"\btorch\.load\(", text)) >= 1
    for path, call in loads:
        assert _keyword(call, "weights_only") is True, (
            f"{path}:{call.lineno}: torch.load without weights_only=True"
        )
    assert not re.search(r"^\s*from torch import .*\bload\b", text, flags=re.MULTILINE)


def test_every_model_from_pretrained_in_src_reads_safetensors_only() -> None:
    """Policy, critic, reward-model backbone and the novelty encoder: weights never come from a
    pickle (a hub id or folder with only ``.bin`` files is refused by transformers). The GGUF
    reader is the one exception: a GGUF file is not a pickle."""
    calls = [(path, call) for path, call in _calls("from_pretrained")
             if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
             and call.func.value.id.startswith("AutoModel")]  # fmt: skip
    assert len(calls) >= 4
    for path, call in calls:
        if _keyword(call, "gguf_file") != "<absent>":
            continue
        assert _keyword(call, "use_safetensors") is True, f"{path}:{call.lineno}: from_pretrained without use_safetensors=True"


def test_nothing_else_in_src_unpickles() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    assert not re.search(
        r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|marshal)\b",
        text,
        flags=re.MULTILINE,
    )
    assert "allow_pickle=True" not in text
    assert not re.search(
        r"\byaml\.(unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader\b", text
    )


def _checkpoint(tmp_path: Path) -> tuple[Path, Any, Any, Any]:
    """A real checkpoint of the tiny model (run_dir, model, optimizer, scheduler)."""
    from rewardlab.checkpoint import save_checkpoint
    from rewardlab.models.tiny import build_model

    model = build_model(16, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run = tmp_path / "run"
    save_checkpoint(run, model, optimizer, scheduler, 1, {}, keep=2)
    return run, model, optimizer, scheduler


def test_a_checkpoint_holds_safetensors_weights_and_a_weights_only_state(tmp_path: Path) -> None:
    from rewardlab.checkpoint import latest_checkpoint, load_checkpoint

    run, model, optimizer, scheduler = _checkpoint(tmp_path)
    folder = latest_checkpoint(run)
    assert sorted(p.name for p in folder.iterdir()) == ["trainer.pt", "weights.safetensors"]
    torch.load(folder / "trainer.pt", weights_only=True)  # loads as data only
    assert load_checkpoint(folder, model, optimizer, scheduler).step == 1


def test_a_checkpoint_state_that_would_run_code_is_refused_and_not_run(tmp_path: Path) -> None:
    from rewardlab.checkpoint import latest_checkpoint, load_checkpoint

    run, model, optimizer, scheduler = _checkpoint(tmp_path)
    folder = latest_checkpoint(run)
    marker = tmp_path / "the-pickle-ran"
    torch.save({"step": 1, "optimizer": RunsCode(marker)}, folder / "trainer.pt")
    with pytest.raises(
        RewardlabError,
        match=r"trainer\.pt: this checkpoint file is damaged or was not written by rewardlab",
    ):
        load_checkpoint(folder, model, optimizer, scheduler)
    assert not marker.exists()


def test_a_checkpoint_with_pickled_weights_instead_of_safetensors_is_refused(
    tmp_path: Path,
) -> None:
    from rewardlab.checkpoint import latest_checkpoint, load_checkpoint

    run, model, optimizer, scheduler = _checkpoint(tmp_path)
    folder = latest_checkpoint(run)
    marker = tmp_path / "the-pickle-ran"
    (folder / "weights.safetensors").unlink()
    torch.save({"weights": RunsCode(marker)}, folder / "weights.bin")
    with pytest.raises(RewardlabError, match=r"weights\.safetensors: .*the file is missing"):
        load_checkpoint(folder, model, optimizer, scheduler)
    assert not marker.exists()


# --------------------------------------------------------------------------- model folders


def _tiny_folder(folder: Path) -> Path:
    import contextlib
    import io

    from rewardlab.models.tiny import write_tiny

    with contextlib.redirect_stderr(io.StringIO()):
        return write_tiny(folder)


def test_a_model_folder_with_only_pickle_weights_is_refused_and_not_run(tmp_path: Path) -> None:
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    folder = _tiny_folder(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "the-pickle-ran"
    torch.save({"model.embed_tokens.weight": RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(
        RewardlabError, match=r"holds its weights only as pickle files \(pytorch_model\.bin\)"
    ):
        load_policy(ModelConfig(name=str(folder)))
    assert not marker.exists()


def test_the_policy_is_loaded_from_safetensors_without_remote_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers

    from rewardlab.config import ModelConfig
    from rewardlab.models import loading

    seen: list[dict[str, Any]] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    loading.load_policy(ModelConfig())
    assert seen and seen[0].get("use_safetensors") is True
    assert not seen[0].get("trust_remote_code", False)


def test_trust_remote_code_is_never_passed_and_is_not_a_config_key() -> None:
    from rewardlab.config import ModelConfig, RunConfig, load_config

    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, (
                    f"{path}:{node.value.lineno}"
                )
    assert "trust_remote_code" not in ModelConfig.model_fields
    with pytest.raises(ConfigError, match=r"unknown key 'model\.trust_remote_code'"):
        load_config(RunConfig, None, ["model.trust_remote_code=true"])


def test_a_config_cannot_build_python_objects(tmp_path: Path) -> None:
    from rewardlab.config import RunConfig, load_config

    marker = tmp_path / "the-yaml-ran"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"seed: !!python/object/apply:os.makedirs ['{marker}']\n"
    )  # runs under yaml.unsafe_load
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, config)
    assert not marker.exists()


# --------------------------------------------------------------------------- judge API keys

SECRET = "sk-rewardlab-test-9f3c2a7e51"


@pytest.fixture
def judge_server() -> Iterator[dict[str, Any]]:
    """An OpenAI-style endpoint that answers "Score: 5" and records the Authorization headers."""
    seen: dict[str, Any] = {"auth": []}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen["auth"].append(self.headers.get("Authorization"))
            body = json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Score: 5"}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_judge_key_from_the_environment_is_in_no_file_of_the_run(
    tmp_path: Path,
    judge_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rewardlab.config import RunConfig, load_config
    from rewardlab.trainers.online import train

    monkeypatch.setenv("RL_SAFE_JUDGE_KEY", SECRET)
    run, cache = tmp_path / "run", tmp_path / "run" / "judge-cache.jsonl"
    judge = (
        f"{{name: llm_judge, args: {{endpoint: '{judge_server['url']}', model: m, api_key_env: RL_SAFE_JUDGE_KEY, "
        f"retries: 0, cache: '{cache}'}}}}"
    )
    config = load_config(RunConfig, None, [
        f"run_dir={run}", f"rewards=[{judge}]", "train.steps=2", "train.prompts_per_step=2",
        "rollout.num_generations=2", "rollout.max_new_tokens=2", "data.heldout_size=2", "eval.every=1",
        "eval.pass_k=1", "logging.samples=2", "checkpoint.every=1",
    ])  # fmt: skip
    train(config)
    assert judge_server["auth"] and set(judge_server["auth"]) == {
        f"Bearer {SECRET}"
    }  # the key was used
    files = [p for p in run.rglob("*") if p.is_file()]
    assert cache in files and (run / "config.yaml") in files and (run / "metrics.jsonl") in files
    assert "RL_SAFE_JUDGE_KEY" in (run / "config.yaml").read_text()  # the variable's name only
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the judge key is in {leaked}"
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_a_key_given_in_place_of_the_variable_name_is_refused(tmp_path: Path) -> None:
    from rewardlab.config import RunConfig, load_config
    from rewardlab.rewards import build_reward_sources

    judge = f"{{name: llm_judge, args: {{endpoint: 'http://127.0.0.1:9/v1', model: m, api_key_env: {SECRET}}}}}"
    config = load_config(RunConfig, None, [f"rewards=[{judge}]"])
    with pytest.raises(ConfigError, match="never the key itself") as err:
        build_reward_sources(config.rewards, None)
    assert "environment variable name" in str(err.value)


def test_a_judge_client_does_not_show_its_key() -> None:
    from rewardlab.judges.client import ChatClient

    client = ChatClient(endpoint="http://127.0.0.1:9/v1", model="m", api_key=SECRET, cache=False)
    assert SECRET not in repr(client) and SECRET not in str(client)
