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
from rewardlab.errors import RewardlabError, final_model_hint, writing_folder

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
        _check_weights(name, path)
        return str(path)
    if name.startswith((".", "/", "~")):
        raise RewardlabError(f"model.name: '{name}' does not exist")
    return name  # a hub id: works where the user has a network or a warm cache


# Weights in these formats are pickles, which can run code when they are loaded.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _check_weights(name: str, path: Path) -> None:
    """A local model folder needs safetensors weights. One whose weights are only pickle files
    is refused: weights are read from safetensors files only, which hold tensors and nothing
    that runs."""
    if path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if not pickles:
            raise RewardlabError(
                f"model.name: '{name}' has config.json but no weights (model.safetensors); point "
                "it at a complete save_pretrained folder (config.json, model.safetensors, tokenizer "
                "files) or a run's final/ folder"
            )
        raise RewardlabError(
            f"model.name: '{name}' holds its weights only as pickle files ({', '.join(pickles[:3])}), "
            "which can run code when loaded; rewardlab reads weights from safetensors files only. "
            "Convert the folder once, with a source you trust: load it with transformers and "
            "save_pretrained(new_folder, safe_serialization=True), then point model.name at new_folder"
        )


def load_tokenizer(path: str, *, owner: str | None = None) -> Any:
    """The tokenizer of the model at ``path`` (pad = EOS when it has no pad token); a folder
    whose tokenizer files are missing or broken is a ``RewardlabError`` (prefixed ``owner:``)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:  # missing files, unreadable or unknown tokenizer
        files = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
        if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in files):
            reason = "the folder has no tokenizer.json or other tokenizer file"
        else:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise RewardlabError(
            f"{owner + ': ' if owner else ''}could not load the tokenizer of '{path}' ({reason}); "
            "a model folder needs the tokenizer files save_pretrained writes (tokenizer.json and "
            "tokenizer_config.json): copy them from the model the weights came from"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(config: ModelConfig, *, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """The trainable policy and its tokenizer; with ``config.lora`` the policy is a peft model
    whose base weights are frozen."""
    path = resolve_model_path(config.name, seed=seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    try:
        # use_safetensors: never unpickle a weights file (see _check_weights).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except OSError as e:
        raise RewardlabError(f"model.name: could not load '{config.name}': {e}") from None
    tokenizer = load_tokenizer(path, owner="model.name")
    if tokenizer.eos_token_id is None:
        raise RewardlabError(
            f"model.name: the tokenizer of '{config.name}' has no EOS token"
            f"{' and no pad token' if tokenizer.pad_token_id is None else ''}; completions end at "
            "EOS and batches are padded with the pad token (EOS when there is none): set "
            f"\"eos_token\" (and \"pad_token\") in {Path(path) / 'tokenizer_config.json'} to tokens of "
            "its vocabulary, such as the one the model ends its replies with"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < tokenizer.model_max_length:
        tokenizer.model_max_length = positions  # the context: dataset prompts are checked against it
    if config.gradient_checkpointing:
        # Non-reentrant: works with a frozen base under LoRA without marking inputs as requiring
        # grad. Only training-mode forwards recompute; generation runs in eval mode and keeps
        # its KV cache.
        enable_checkpointing(model)
    if config.lora is not None:
        model = add_lora(model, config.lora)
    return model, tokenizer


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Activation checkpointing of every decoder layer, non-reentrant (transformers 5 renamed
    ``gradient_checkpointing_enable``; the old name is kept for older releases)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:  # peft: no module matches, or one it cannot adapt
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RewardlabError(
            f"model.lora.target_modules: LoRA cannot be added to {lora.target_modules!r} ({reason}); "
            f"this model's linear layers are {', '.join(linear) or '(none)'}: list some of them, "
            "or use all-linear"
        ) from None


def is_lora(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def export_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Save a plain HF model folder (LoRA merged in) that ``model.name`` can point at.

    Written as ``<folder>.tmp`` and renamed into place; a failed write (disk full) removes the
    partial folder and is one ``WriteFailed`` saying that the run's checkpoints are intact and
    that resuming writes the model again."""
    to_save = model
    if is_lora(model):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
    with writing_folder("the final model", folder, final_model_hint(folder.parent)) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
