"""Generation on the CPU: a lean KV-cache decode loop that reproduces Hugging Face
``generate`` token for token, with ``generate`` itself as the fallback."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.batch import RolloutBatch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    greedy: bool = False
    logprobs: bool = False  # return the engine's own log-probs of the sampled tokens


def tokenize_prompts(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask."""
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return pad_left(encoded, tokenizer.pad_token_id)


def pad_left(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one left-padded id tensor and its mask."""
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real completion tokens (up to and including the first EOS) and a truncated flag."""
    is_eos = completion_ids == eos_token_id
    seen_eos_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    mask = (~seen_eos_before).long()
    truncated = ~is_eos.any(-1)
    return mask, truncated


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], params: SamplingParams) -> RolloutBatch:
    """``params.n`` completions for each prompt; rows of one prompt are adjacent and share a
    group id."""
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    return generate_from_ids(model, tokenizer, prompt_ids, prompt_mask, params)


# (model, prompt ids, prompt mask, params, tokenizer) -> (sequences, per-step scores or None):
# how a batch of already repeated prompts is decoded.
Decoder = Callable[
    [Any, torch.Tensor, torch.Tensor, SamplingParams, Any], tuple[torch.Tensor, Sequence[torch.Tensor] | None]
]


@torch.no_grad()
def generate_from_ids(
    model: Any,
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    decode: Decoder | None = None,
) -> RolloutBatch:
    """``generate`` on prompts already tokenized and left-padded (multi-turn histories).
    ``decode`` replaces the decoding itself (per-prompt seeded sampling, ``rollout/seeded.py``);
    by default the lean loop, or ``model.generate`` where the loop does not apply."""
    n_prompts = prompt_ids.shape[0]
    prompt_ids = prompt_ids.repeat_interleave(params.n, 0)
    prompt_mask = prompt_mask.repeat_interleave(params.n, 0)
    if decode is None:
        decode = _lean_decode if lean_decode_applies(model) else _hf_generate
    was_training = model.training
    model.eval()
    try:
        sequences, scores = decode(model, prompt_ids, prompt_mask, params, tokenizer)
    finally:
        model.train(was_training)
    completion_ids = sequences[:, prompt_ids.shape[1] :]
    mask, truncated = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    group = torch.arange(n_prompts).repeat_interleave(params.n)
    batch = RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, group, truncated)
    if params.logprobs:
        assert scores is not None
        batch.sampling_logp = _sampled_logprobs(scores, completion_ids, mask)
    return batch


# Generation-config fields that add no logits processor or stopping rule of their own (or that
# every call here overrides), so the lean loop below does exactly what ``generate`` would.
_NEUTRAL_GENERATION_FIELDS = {
    "use_cache", "output_attentions", "output_hidden_states", "pad_token_id", "bos_token_id",
    "eos_token_id", "_from_model_config", "transformers_version", "do_sample", "temperature",
    "top_p", "top_k", "max_length", "max_new_tokens", "return_dict_in_generate", "output_scores",
}

LEAN_DECODE = True  # switch off (tests, debugging) to decode with ``model.generate``


def lean_decode_applies(model: Any) -> bool:
    """The lean loop reproduces ``generate`` only for a decoder-only model whose generation
    config adds no logits processor (repetition penalty, min length, bad words, ...): anything
    else goes through ``generate`` itself."""
    if not LEAN_DECODE:
        return False
    config = getattr(model, "config", None)
    gen = getattr(model, "generation_config", None)
    if config is None or gen is None or getattr(config, "is_encoder_decoder", False):
        return False
    return set(gen.to_diff_dict()) <= _NEUTRAL_GENERATION_FIELDS


def generate_args(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, tokenizer: Any
) -> dict[str, Any]:
    """The arguments every HF ``generate`` call here shares: the batch, the token budget, the
    tokenizer's pad / EOS, and a dict output."""
    return {
        "input_ids": prompt_ids,
        "attention_mask": prompt_mask,
        "max_new_tokens": params.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "return_dict_in_generate": True,
    }


def _hf_generate(
    model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, tokenizer: Any
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if params.greedy
        else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
    )
    out = model.generate(
        **generate_args(prompt_ids, prompt_mask, params, tokenizer), output_scores=params.logprobs, **sampling
    )
    return out.sequences, out.scores if params.logprobs else None


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """HF's ``TopPLogitsWarper`` op for op (sort ascending, drop the tail whose cumulative mass
    is at most 1 - top_p, keep the most likely token), so the filtered scores are bitwise equal."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = 0
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


def _lean_decode(
    model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, tokenizer: Any
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``model.generate`` (multinomial sampling or greedy, KV cache) without its per-step
    bookkeeping: input preparation, logits-processor and stopping-criteria objects, output
    containers. Every tensor operation that touches the samples is the one ``generate`` runs,
    in the same order on the same inputs (the same forward calls with a ``DynamicCache``; the
    float32 copy of the last position's logits; temperature, then top-p; softmax then
    ``torch.multinomial``, or argmax), so for the same torch seed the tokens, the RNG state
    afterwards and the scores are bitwise those of ``generate`` (tests/test_decode.py checks).

    Why: the loop is the place where decoding can get faster without changing a sample, and
    it removes ``generate``'s own overhead (about 7% of decode time on the built-in tiny model,
    docs/benchmarks.md); the rest of a decode step is the model's forward pass itself. A static
    cache or fused projections would round differently and change the samples of seeded runs,
    so they are not used here."""
    from transformers import DynamicCache

    net = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers stay in
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    sample = not params.greedy
    temperature = params.temperature if sample and params.temperature != 1.0 else None
    top_p = params.top_p if sample and params.top_p < 1.0 else None
    accepts = inspect.signature(net.forward).parameters
    # What generate passes besides the ids and the cache, each of which changes the rounding of
    # the logits: logits_to_keep=1 (the lm_head over one position); position ids counted over
    # real tokens (padding at 0); and no mask at all when nothing is padded (the attention then
    # takes its unmasked causal path).
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    positions = None
    if "position_ids" in accepts:
        positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)
    mask = None if bool((prompt_mask == 1).all()) else prompt_mask
    cache = DynamicCache(config=net.config.get_text_config(decoder=True))
    rows = prompt_ids.shape[0]
    unfinished = torch.ones(rows, dtype=torch.long)
    scores_kept: list[torch.Tensor] | None = [] if params.logprobs else None
    tokens: list[torch.Tensor] = []
    out = net(
        input_ids=prompt_ids, position_ids=positions, past_key_values=cache, attention_mask=mask, use_cache=True,
        return_dict=True, **extra,
    )
    for step in range(params.max_new_tokens):
        if step:
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=-1)
            if positions is not None:
                positions = positions[:, -1:] + 1
            out = net(
                input_ids=tokens[-1][:, None], position_ids=positions, past_key_values=cache, attention_mask=mask,
                use_cache=True, return_dict=True, **extra,
            )
        scores = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        del out
        if temperature is not None:
            scores = scores / temperature
        if top_p is not None:
            scores = top_p_filter(scores, top_p)
        if scores_kept is not None:
            scores_kept.append(scores)
        if sample:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            nxt = torch.argmax(scores, dim=-1)
        nxt = nxt * unfinished + pad_id * (1 - unfinished)
        tokens.append(nxt)
        unfinished = unfinished & (nxt != eos_id).long()
        if not bool(unfinished.any()):
            break
    if not tokens:
        return prompt_ids, scores_kept
    return torch.cat([prompt_ids, torch.stack(tokens, dim=1)], dim=1), scores_kept



def _sampled_logprobs(
    scores: Sequence[torch.Tensor], completion_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Log-probs of the sampled tokens under the distribution ``generate`` sampled from (after
    temperature and top-p): what an inference engine reports, and what mismatch corrections
    compare with the trainer's log-probs. 0 on padding."""
    logp = torch.log_softmax(torch.stack(scores, dim=1).float(), dim=-1)  # [B, T, V]
    picked = logp.gather(-1, completion_ids[:, : logp.shape[1], None]).squeeze(-1)
    return torch.where(mask.bool(), picked, torch.zeros_like(picked))


def decode_completions(tokenizer: Any, batch: RolloutBatch) -> list[str]:
    return tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
