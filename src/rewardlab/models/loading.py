"""Load a policy (and its tokenizer) by name: one `from_pretrained` path for every source."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rewardlab.config import LoraConfig, ModelConfig
from rewardlab.errors import RewardlabError

TINY = "builtin:tiny"
SMOLLM2 = "smollm2-135m"


def cache_root() -> Path:
    """Where converted and built-in models live: ``$REWARDLAB_CACHE`` or ``~/.cache/rewardlab``."""
    return Path(os.environ.get("REWARDLAB_CACHE", Path.home() / ".cache" / "rewardlab"))


def tiny_path(seed: int = 0) -> Path:
    """The folder of ``builtin:tiny`` initialized with ``seed``, written once (atomically)."""
    from rewardlab.models.tiny import write_tiny

    target = cache_root() / f"tiny-seed{seed}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    write_tiny(tmp, seed=seed)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str, *, seed: int = 0) -> str:
    """Turn a model name from a config into something ``from_pretrained`` accepts."""
    if name == TINY:
        return str(tiny_path(seed))
    if name == SMOLLM2:
        from rewardlab.models.smollm2 import smollm2_path

        return str(smollm2_path())
    if name.startswith("builtin:"):
        raise RewardlabError(f"model.name: unknown built-in model '{name}'; use '{TINY}'")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RewardlabError(
                f"model.name: '{name}' is a folder without config.json; point it at a "
                "Hugging Face model folder (save_pretrained output) or a run's final/ folder"
            )
        return str(path)
    if name.startswith((".", "/", "~")):
        raise RewardlabError(f"model.name: '{name}' does not exist")
    return name  # a hub id: works where the user has a network or a warm cache


def load_tokenizer(path: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(config: ModelConfig, *, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """The trainable policy and its tokenizer; with ``config.lora`` the policy is a peft model
    whose base weights are frozen."""
    path = resolve_model_path(config.name, seed=seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise RewardlabError(f"model.name: could not load '{config.name}': {e}") from None
    tokenizer = load_tokenizer(path)
    if config.lora is not None:
        model = add_lora(model, config.lora)
    return model, tokenizer


def add_lora(model: PreTrainedModel, lora: LoraConfig) -> Any:
    """Wrap ``model`` with a LoRA adapter (peft); only the adapter is trained."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def is_lora(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def export_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Save a plain HF model folder (LoRA merged in) that ``model.name`` can point at."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = model
    if is_lora(model):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
    to_save.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
