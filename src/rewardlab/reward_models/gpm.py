"""A general preference model (GPM): preference representations and a skew-symmetric score.

"General Preference Modeling with Preference Representations for Aligning Language Models"
(Zhang, Zhang, Wu, Xu, Gu; arXiv 2410.02197; v2 titled "Beyond Bradley-Terry Models: A
General Preference Model for Language Model Alignment").

Each (prompt, response) is embedded once into a preference representation ``v`` in R^{2k}
(the backbone and pooling of :class:`~rewardlab.reward_models.model.RewardModel`, then a
linear map to 2k numbers, L2-normalized to unit length by default as in the paper). Two
responses are compared by the skew-symmetric bilinear form::

    s(y1 > y2 | x) = <R v1, v2>,   R = blockdiag(l_1 J, ..., l_k J),   J = [[0, -1], [1, 0]]
                   = sum_l l_l * (v1[2l] * v2[2l+1] - v1[2l+1] * v2[2l])

    P(y1 beats y2 | x) = sigmoid(s / temperature)          (the paper's beta)

R^T = -R, so s(y1, y2) = -s(y2, y1) and s(y, y) = 0 for any weights: P(a beats b) +
P(b beats a) = 1 and a response ties with itself by construction. Unlike a scalar reward
(Bradley-Terry, P = sigmoid(r1 - r2)), the score can be cyclic: with k = 1 and A, B, C at
angles 0, 120 and 240 degrees, s(A, B) = s(B, C) = s(C, A) = sin(120 deg) > 0 (rock, paper,
scissors), which no scalar reward can express.

Choices made here (``GPMHeadConfig``):

* ``normalize`` (default on, the paper's choice): v = u / ||u||, so |s| <= max_l l_l and the
  temperature sets how sharp P can get (temperature 0.1: P up to sigmoid(10)).
* ``scales``: ``fixed`` (default; every l_l = 1, the paper's plain operator) or ``learned``
  (one positive weight per 2-dim block, l_l = exp(w_l), w_l starting at 0, shared by all
  prompts). The paper's prompt-dependent eigenvalue gate l_l(x) is not implemented.
* The linear map starts random (seeded), not at zero as a reward head does: s is bilinear in
  v, so a zero map would have zero gradient forever.

The training loss is the negative log-likelihood of the observed preference,
``-log sigmoid(s(chosen, rejected) / temperature)`` per pair (:func:`gpm_loss`).

A saved model is a folder like a reward model's: the backbone and tokenizer, ``gpm_head.safetensors``
and ``gpm.json`` (pooling, max length, dim, normalize, scales, temperature).

:func:`judge` makes a saved GPM a judge for the online preference methods and the ``spo``
reward: ``judge: {function: "rewardlab.reward_models.gpm:judge", args: {path: FOLDER}}``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from rewardlab.config import Section
from rewardlab.errors import RewardlabError
from rewardlab.models.loading import load_tokenizer
from rewardlab.reward_models.config import RewardBackboneConfig
from rewardlab.reward_models.model import (
    RewardModel,
    _hidden_size,
    _load_backbone,
    is_encoder,
    resolve_backbone,
)

GPM_HEAD_FILE = "gpm_head.safetensors"
GPM_META_FILE = "gpm.json"

Scales = Literal["fixed", "learned"]


class GPMHeadConfig(Section):
    """The preference head: ``dim`` = 2k numbers per response (k skew-symmetric 2-dim blocks),
    unit-length or not, fixed or learned block weights, and the temperature (beta) of P."""

    dim: int = Field(8, ge=2, description="size 2k of the preference representation (even)")
    normalize: bool = Field(True, description="L2-normalize each representation (the paper's choice)")
    scales: Scales = Field("fixed", description="block weights: fixed at 1, or learned (one per block)")
    temperature: float = Field(0.1, gt=0.0, description="P = sigmoid(score / temperature)")

    @model_validator(mode="after")
    def _even(self) -> GPMHeadConfig:
        if self.dim % 2:
            raise ValueError(f"dim: must be even (k blocks of 2), got {self.dim}")
        return self


# --------------------------------------------------------------------------- the math


def preference_score(v1: torch.Tensor, v2: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """``<R v1, v2>`` for rows of representations [..., 2k] -> [...]; ``scales`` [k] are the
    block weights (None: all 1). Block l contributes ``l_l * (v1[2l] v2[2l+1] - v1[2l+1] v2[2l])``,
    which is antisymmetric in (v1, v2) and exactly 0 when v1 == v2."""
    if v1.shape[-1] % 2 or v1.shape != v2.shape:
        raise ValueError(f"representations must have the same even size, got {tuple(v1.shape)} and {tuple(v2.shape)}")
    a, b = v1.unflatten(-1, (-1, 2)), v2.unflatten(-1, (-1, 2))
    blocks = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if scales is not None:
        blocks = blocks * scales.to(blocks.dtype)
    return blocks.sum(-1)


def skew_operator(dim: int, scales: torch.Tensor | None = None) -> torch.Tensor:
    """The matrix R [2k, 2k] (for checks and display; scoring uses :func:`preference_score`)."""
    k = dim // 2
    weights = torch.ones(k) if scales is None else scales.detach().float()
    out = torch.zeros(dim, dim)
    for lo in range(k):
        out[2 * lo, 2 * lo + 1] = -weights[lo]
        out[2 * lo + 1, 2 * lo] = weights[lo]
    return out


def gpm_loss(score: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-pair loss ``-log sigmoid(s(chosen, rejected) / temperature)``: the negative
    log-likelihood of the observed preference under P = sigmoid(s / temperature)."""
    return -F.logsigmoid(score / temperature)


# --------------------------------------------------------------------------- the model


class GeneralPreferenceModel(RewardModel):
    """A :class:`RewardModel`'s backbone, tokenizer and pooling with a 2k-dim preference head
    instead of a scalar one. ``forward`` gives one representation per row, [B, 2k] float32."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        pooling: str,
        max_length: int = 256,
        head: GPMHeadConfig | None = None,
    ) -> None:
        super().__init__(backbone, tokenizer, pooling, max_length)
        self.config = head or GPMHeadConfig()
        # Replace the reward head (zero-initialized there) by a random preference map.
        self.head = nn.Linear(_hidden_size(backbone.config), self.config.dim, dtype=torch.float32)
        self.log_scales = nn.Parameter(
            torch.zeros(self.config.dim // 2), requires_grad=self.config.scales == "learned"
        )

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def scales(self) -> torch.Tensor | None:
        """The block weights [k] (None when fixed at 1)."""
        return self.log_scales.exp() if self.config.scales == "learned" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One preference representation per row, [B, 2k] float32 (unit length if normalized)."""
        v = super().forward(input_ids, attention_mask, **kwargs)  # the head's [B, 2k]
        return F.normalize(v, dim=-1) if self.config.normalize else v

    def embed(self, prompts: Sequence[str], completions: Sequence[str] | None = None) -> torch.Tensor:
        """Representations with gradients (training), [B, 2k]."""
        return self(**self.encode(prompts, completions))

    def score_pairs(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """s(y1 > y2) for rows of representations, [B]."""
        return preference_score(v1, v2, self.scales())

    def score(self, *args: Any, **kwargs: Any) -> list[float]:
        raise TypeError("a general preference model has no scalar reward; use probs() or scores()")

    @torch.no_grad()
    def embeddings(
        self, prompts: Sequence[str], completions: Sequence[str] | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Representations in eval mode, batch by batch, [B, 2k]."""
        was_training = self.training
        self.eval()
        try:
            parts = [
                self.embed(prompts[lo : lo + batch_size], None if completions is None else completions[lo : lo + batch_size])
                for lo in range(0, len(prompts), batch_size)
            ]
            return torch.cat(parts) if parts else torch.zeros(0, self.dim)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def scores(
        self, prompts: Sequence[str], completions_a: Sequence[str], completions_b: Sequence[str], batch_size: int = 64
    ) -> torch.Tensor:
        """s(a > b | prompt) per row, [M] float32. Each distinct (prompt, completion) is
        embedded once (K samples of a prompt in K(K-1) pairs cost K forward rows)."""
        if not (len(prompts) == len(completions_a) == len(completions_b)):
            raise ValueError(f"{len(prompts)} prompts for {len(completions_a)} completions a and {len(completions_b)} b")
        index: dict[tuple[str, str], int] = {}
        for p, a, b in zip(prompts, completions_a, completions_b, strict=True):
            index.setdefault((p, a), len(index))
            index.setdefault((p, b), len(index))
        items = list(index)
        v = self.embeddings([p for p, _ in items], [c for _, c in items], batch_size)
        ia = torch.tensor([index[(p, a)] for p, a in zip(prompts, completions_a, strict=True)], dtype=torch.long)
        ib = torch.tensor([index[(p, b)] for p, b in zip(prompts, completions_b, strict=True)], dtype=torch.long)
        return self.score_pairs(v[ia], v[ib]).float()

    def probs(
        self, prompts: Sequence[str], completions_a: Sequence[str], completions_b: Sequence[str], batch_size: int = 64
    ) -> torch.Tensor:
        """P(a beats b | prompt) = sigmoid(s / temperature) per row, [M] float32."""
        return torch.sigmoid(self.scores(prompts, completions_a, completions_b, batch_size) / self.temperature)

    # ------------------------------------------------------------------ saving

    def save(self, folder: str | Path) -> Path:
        """Write the model into ``folder`` atomically (a temporary folder renamed into place)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.backbone.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        tensors = {f"head.{k}": v.detach().contiguous() for k, v in self.head.state_dict().items()}
        tensors["log_scales"] = self.log_scales.detach().contiguous()
        save_file(tensors, str(tmp / GPM_HEAD_FILE))
        meta = {
            "format": 1,
            "kind": "general_preference_model",
            "pooling": self.pooling,
            "max_length": self.max_length,
            **self.config.model_dump(mode="json"),
        }
        (tmp / GPM_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32) -> GeneralPreferenceModel:
        """A model written by :meth:`save`."""
        folder = Path(folder)
        meta_path = folder / GPM_META_FILE
        if not meta_path.is_file() or not (folder / GPM_HEAD_FILE).is_file():
            raise RewardlabError(
                f"{folder}: not a general preference model folder (no {GPM_META_FILE} / {GPM_HEAD_FILE})"
            )
        meta = json.loads(meta_path.read_text())
        head = GPMHeadConfig(**{k: meta[k] for k in GPMHeadConfig.model_fields if k in meta})
        backbone = _load_backbone(str(folder), dtype, str(folder))
        model = cls(backbone, load_tokenizer(str(folder)), meta["pooling"], int(meta["max_length"]), head)
        tensors = load_file(str(folder / GPM_HEAD_FILE))
        model.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
        with torch.no_grad():
            model.log_scales.copy_(tensors["log_scales"])
        return model


def is_gpm_folder(path: str | Path) -> bool:
    return (Path(path) / GPM_META_FILE).is_file()


def load_gpm(config: RewardBackboneConfig, head: GPMHeadConfig, *, seed: int = 0) -> GeneralPreferenceModel:
    """A GPM for training: a saved GPM folder (its own head settings kept), or a fresh random
    head on the named backbone (a reward model folder gives its backbone; its head is unused).
    Call after seeding torch: the head's initial weights come from the global generator."""
    path = resolve_backbone(config.name, seed=seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    if is_gpm_folder(path):
        model = GeneralPreferenceModel.load(path, dtype=dtype)
        model.max_length = config.max_length
        return model
    backbone = _load_backbone(path, dtype, config.name)
    pooling = config.pooling
    if pooling == "auto":
        pooling = "mean" if is_encoder(backbone.config) else "last"
    return GeneralPreferenceModel(backbone, load_tokenizer(path), pooling, config.max_length, head)


# --------------------------------------------------------------------------- the judge

_LOADED: dict[str, GeneralPreferenceModel] = {}
_LOCK = threading.Lock()


def cached_gpm(path: str | Path) -> GeneralPreferenceModel:
    """The GPM saved at ``path``, loaded once per process (by resolved path)."""
    key = str(Path(path).expanduser().resolve())
    with _LOCK:
        if key not in _LOADED:
            if not is_gpm_folder(key):
                raise RewardlabError(
                    f"judge arg 'path': '{path}' is not a general preference model folder (no {GPM_META_FILE}); "
                    "give the final/ folder of a GPM run"
                )
            model = GeneralPreferenceModel.load(key)
            model.eval()
            _LOADED[key] = model
        return _LOADED[key]


def judge(
    prompts: list[str],
    completions_a: list[str],
    completions_b: list[str],
    path: str | None = None,
    batch_size: int = 64,
    **columns: Any,
) -> list[float]:
    """A saved GPM as a judge: P(a beats b | prompt) per row. Use it as
    ``judge: {function: "rewardlab.reward_models.gpm:judge", args: {path: FOLDER}}`` (the
    dataset ``columns`` are accepted and ignored); the model is loaded once per path."""
    if path is None:
        raise RewardlabError("judge 'rewardlab.reward_models.gpm:judge' needs arg 'path' (a saved GPM folder)")
    model = cached_gpm(path)
    return model.probs(prompts, completions_a, completions_b, batch_size=int(batch_size)).tolist()
