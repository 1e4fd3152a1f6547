"""Per-token log-probabilities of completions under a model, without [B, T+P, V] logits.

Two paths give the same numbers. ``forward_completion_logits`` + ``token_logprobs`` /
``token_entropy`` materialize the [B, T, V] completion logits (float32 and 49152 columns on
SmolLM2: the largest activation of a step, plus as much again for the softmax in backward).
``completion_logprobs`` runs the model's decoder only and applies the LM head chunk by chunk
over the B*T positions inside one autograd function that recomputes each chunk's logits in
backward, so at most one chunk of logits exists at a time, with or without gradient.
``batch_logprobs`` (old / reference log-probs) always takes it where the model allows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardlab.batch import RolloutBatch

# Causal LMs whose logits are exactly lm_head(decoder(...).last_hidden_state): no logit scale,
# soft-capping or extra projection that the chunked path would have to know about. Others
# take the plain path.
_PLAIN_HEAD_MODELS = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}

# Bytes of float32 logits one chunk may hold (32 MB: 170 positions of SmolLM2's vocabulary).
CHUNK_BYTES = 32 * 2**20


def forward_completion_logits(model: Any, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Logits [B, T, V] that predict each completion token (scaled by 1/temperature so that
    log-probs are those of the sampling distribution)."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    # Same positions as generate() used: count only real tokens, so left padding is invisible.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    width = batch.completion_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        logits_to_keep=width + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] in float32, without materializing the full log-softmax.

    Low-precision logits are upcast one row at a time: subtracting two bf16 numbers would
    round a confident token's log-prob to 0 (errors of ~0.03 that go straight into PPO
    ratios), while upcasting the whole [B, T, V] tensor at once would double peak memory.
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = [token_logprobs(row.float(), row_ids) for row, row_ids in zip(logits, ids, strict=True)]
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution, [B, T]; differentiable (the entropy bonus
    needs its gradient), so pass detached logits when only the value is wanted."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def batch_logprobs(model: Any, batch: RolloutBatch, temperature: float, micro_batch: int) -> torch.Tensor:
    """Completion log-probs [B, T] in micro-batches, no gradient (old / reference policy);
    chunked over the vocabulary logits (``completion_logprobs``)."""
    parts = []
    for start in range(0, batch.size, micro_batch):
        part = batch.select(torch.arange(start, min(start + micro_batch, batch.size)))
        parts.append(completion_logprobs(model, part, temperature)[0])
    return torch.cat(parts, 0)


def completion_logprobs(
    model: Any, batch: RolloutBatch, temperature: float, *, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs [B, T] float32 (and the entropy of each position's distribution when
    ``entropy``) at ``temperature``, differentiable, equal within float rounding to
    ``token_logprobs(forward_completion_logits(...))`` and ``token_entropy`` of those logits,
    without the [B, T, V] logits ever existing at once (see the module docstring). Models the
    chunked path cannot reproduce exactly (a LoRA-wrapped LM head, logit soft-capping) take the
    plain path."""
    parts = _decoder_and_head(model)
    if parts is None:
        logits = forward_completion_logits(model, batch, temperature)
        return token_logprobs(logits, batch.completion_ids), token_entropy(logits) if entropy else None
    decoder, head = parts
    hidden = completion_hidden_states(decoder, batch)
    rows, width, size = hidden.shape
    chunk = max(1, CHUNK_BYTES // (4 * head.weight.shape[0]))
    logp, ent = _ChunkedHeadLogprobs.apply(
        hidden.reshape(rows * width, size), head.weight, head.bias, batch.completion_ids.reshape(-1),
        float(temperature), chunk, entropy,
    )
    return logp.view(rows, width), ent.view(rows, width) if entropy else None


def completion_hidden_states(decoder: Any, batch: RolloutBatch) -> torch.Tensor:
    """The decoder's final hidden states [B, T, H] that predict each completion token: the
    columns and position ids ``forward_completion_logits`` reads its logits from."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    width = batch.completion_ids.shape[1]
    out = decoder(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state[:, -(width + 1) : -1, :]


def _decoder_and_head(model: Any) -> tuple[Any, nn.Linear] | None:
    """The bare decoder and the plain ``nn.Linear`` LM head of a supported causal LM (through
    a peft wrapper, whose LoRA layers live inside the decoder), or None."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(causal).__name__ not in _PLAIN_HEAD_MODELS:
        return None
    decoder = getattr(causal, getattr(causal, "base_model_prefix", ""), None)
    head = causal.get_output_embeddings()
    if decoder is None or type(head) is not nn.Linear:
        return None
    return decoder, head


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """log softmax(hidden @ W.T + b) / temperature)[ids] and the entropy, chunk by chunk.

    Forward keeps only the per-position log-sum-exp (and entropy); backward recomputes each
    chunk's logits and forms the exact gradient of both outputs with respect to the logits,
    (onehot - p) * g_logp - p * (log p + H) * g_H, divided by the temperature, then passes it
    through the head's matmul to the hidden states, weight and bias.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
        temperature: float, chunk: int, entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32)
        lse = torch.empty(n, dtype=torch.float32)
        ent = torch.empty(n if entropy else 0, dtype=torch.float32)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            z = _chunk_logits(hidden[lo:hi], weight, bias, temperature)
            lse[lo:hi] = torch.logsumexp(z, dim=-1)
            logp[lo:hi] = z.gather(-1, ids[lo:hi, None]).squeeze(-1) - lse[lo:hi]
            if entropy:
                ent[lo:hi] = lse[lo:hi] - (torch.softmax(z, dim=-1) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, ids, lse, ent)
        ctx.temperature, ctx.chunk, ctx.entropy = temperature, chunk, entropy
        if not entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx: Any, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None) -> tuple[Any, ...]:
        hidden, weight, bias, ids, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32) if need_b and bias is not None else None
        weight32 = weight.float()  # no copy for a float32 model
        n = hidden.shape[0]
        for lo in range(0, n, ctx.chunk):
            hi = min(lo + ctx.chunk, n)
            z = _chunk_logits(hidden[lo:hi], weight, bias, ctx.temperature)
            log_p = z - lse[lo:hi, None]
            p = log_p.exp()
            dz = torch.zeros_like(z)
            if g_logp is not None:
                g = g_logp[lo:hi, None].float()
                dz -= p * g
                dz.scatter_add_(-1, ids[lo:hi, None], g)
            if ctx.entropy and g_ent is not None:
                dz -= p * (log_p + ent[lo:hi, None]) * g_ent[lo:hi, None].float()
            if ctx.temperature != 1.0:
                dz /= ctx.temperature
            if need_h:
                grad_h[lo:hi] = (dz @ weight32).to(hidden.dtype)
            if need_w:
                grad_w += dz.T @ hidden[lo:hi].float()
            if grad_b is not None:
                grad_b += dz.sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """One chunk's logits in float32, scaled by 1/temperature (upcast before scaling: the plain
    path's bf16 division would round a confident token's log-prob; see ``token_logprobs``)."""
    z = nn.functional.linear(hidden, weight, bias).float()
    return z / temperature if temperature != 1.0 else z


@torch.no_grad()
def batch_logprobs_and_entropy(
    model: Any, batch: RolloutBatch, temperature: float, micro_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion log-probs and per-token entropy [B, T] in micro-batches, no gradient, through
    the chunked path: the old and reference passes of the RL trainer."""
    logps, entropies = [], []
    for start in range(0, batch.size, micro_batch):
        part = batch.select(torch.arange(start, min(start + micro_batch, batch.size)))
        logp, ent = completion_logprobs(model, part, temperature, entropy=True)
        assert ent is not None
        logps.append(logp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies)
