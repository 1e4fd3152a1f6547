"""Sampling from the geometric mixture of the policy and the reference, token by token.

Nash-MD ("Nash Learning from Human Feedback", Munos et al., arXiv:2312.00886) trains the policy
against opponents drawn from its regularized version, the geometric mixture

    pi_mix(y_t | x, y_<t)  proportional to  pi(y_t | x, y_<t)^(1 - m) * pi_ref(y_t | x, y_<t)^m

with mixture coefficient m in [0, 1] (m = 0 is the policy, m = 1 the reference). The mixture is
normalized at every token; the product of these per-token mixtures is not the sequence-level
geometric mixture (whose normalizer does not factor over tokens), but it is what an
autoregressive sampler can draw exactly, and what Nash-MD implementations sample.

Over the vocabulary, with logits a (policy) and b (reference) and temperature T:

    log pi_mix = log_softmax((1 - m) * log_softmax(a / T) + m * log_softmax(b / T))
               = log_softmax(((1 - m) * a + m * b) / T)

Temperature is applied to each model before mixing, as ``forward_completion_logits`` does for a
single model. The placement does not matter: log_softmax shifts a row by a constant, the final
normalization removes any constant, so tempering the mixture instead (TRL's
``GeometricMixtureWrapper``, whose mixed scores go through ``generate``'s temperature warper)
gives the same distribution. Greedy decoding takes the mixture's argmax, which no T > 0 changes.

Top-p is not supported: truncating the mixture would make the opponent a different distribution
from the regularized policy the Nash-MD update assumes, so ``top_p != 1`` is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.rollout.hf import SamplingParams, completion_mask, tokenize_prompts
from rewardlab.trainers.learner import reference_mode


def mixture_logprobs(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, mix: float, temperature: float
) -> torch.Tensor:
    """Normalized log-probs of the geometric mixture over the last (vocabulary) axis, float32:
    ``log_softmax((1 - mix) * log_softmax(policy_logits / T) + mix * log_softmax(ref_logits / T))``.
    """
    _check_mix(mix)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    policy = torch.log_softmax(policy_logits.float() / temperature, dim=-1)
    ref = torch.log_softmax(ref_logits.float() / temperature, dim=-1)
    # At the endpoints the other model's weight is 0 and 0 * -inf (a masked token) would be NaN.
    if mix == 0:
        return policy
    if mix == 1:
        return ref
    return torch.log_softmax((1 - mix) * policy + mix * ref, dim=-1)


@torch.no_grad()
def generate_mixture(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[str],
    params: SamplingParams,
    mix: float,
) -> RolloutBatch:
    """``params.n`` completions per prompt sampled from the geometric mixture of ``policy`` and
    ``reference``, in the layout of ``rollout.hf.generate``: left-padded prompts, rows of a prompt
    adjacent with a shared group id, completions padded after their first EOS, mask including
    that EOS, ``truncated`` when ``max_new_tokens`` ran out first.

    ``reference`` is entered through ``reference_mode`` for each of its forward passes, so a LoRA
    policy can be its own reference (adapter disabled). With ``params.logprobs`` the mixture
    log-probs of the chosen tokens go to ``sampling_logp`` (0 on padding); like ``generate``,
    greedy decoding reports them at temperature 1.
    """
    _check_params(params, mix)
    device = next(policy.parameters()).device
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    prompt_ids = prompt_ids.repeat_interleave(params.n, 0).to(device)
    prompt_mask = prompt_mask.repeat_interleave(params.n, 0).to(device)
    with _eval_mode(policy, reference):
        completion_ids, picked_logp = _decode(
            policy, reference, prompt_ids, prompt_mask, params, mix, tokenizer
        )
    mask, truncated = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    group = torch.arange(len(prompts), device=device).repeat_interleave(params.n)
    batch = RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, group, truncated)
    if params.logprobs:
        batch.sampling_logp = torch.where(mask.bool(), picked_logp, torch.zeros_like(picked_logp))
    return batch


def _check_mix(mix: float) -> None:
    # Outside [0, 1] the "mixture" extrapolates away from one model: not a regularized policy.
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")


def _check_params(params: SamplingParams, mix: float) -> None:
    _check_mix(mix)
    if params.greedy:
        return
    if params.top_p != 1.0:
        raise ValueError(
            f"generate_mixture samples the full geometric mixture; top_p={params.top_p} is not "
            "supported (set top_p=1.0)"
        )
    if params.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {params.temperature}")


@contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then each model's own mode back; the policy and
    the reference may be one module."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in reversed(list(zip(models, modes, strict=True))):
            m.train(mode)


def _decode(
    policy: Any,
    reference: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    mix: float,
    tokenizer: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token loop: chosen ids [B, T] and their mixture log-probs [B, T], both meaningless
    after a row's first EOS (the caller masks them). T < max_new_tokens when every row has
    emitted EOS earlier."""
    temperature = 1.0 if params.greedy else params.temperature
    attention = prompt_mask
    position_ids = _positions(attention)
    policy_logits, policy_cache = _step(policy, prompt_ids, attention, position_ids, None)
    with reference_mode(reference) as ref:
        ref_logits, ref_cache = _step(ref, prompt_ids, attention, position_ids, None)
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    for t in range(params.max_new_tokens):
        logp = mixture_logprobs(policy_logits, ref_logits, mix, temperature)
        # Finished rows keep sampling (cheaper than compacting the caches); what they draw
        # after their EOS is replaced by pad and masked out afterwards.
        token = _choose(logp, params.greedy)
        tokens.append(token)
        logps.append(logp.gather(-1, token[:, None]).squeeze(-1))
        done = done | (token == tokenizer.eos_token_id)
        if bool(done.all()) or t == params.max_new_tokens - 1:
            break
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        # The new token's position counts real tokens only, as for the prompt, so left padding
        # shifts nothing; the mask spans the cache plus the new token.
        position_ids = _positions(attention)[:, -1:]
        policy_logits, policy_cache = _step(
            policy, token[:, None], attention, position_ids, policy_cache
        )
        with reference_mode(reference) as ref:
            ref_logits, ref_cache = _step(ref, token[:, None], attention, position_ids, ref_cache)
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def _positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding (pads get 0; they are masked anyway)."""
    return (attention.long().cumsum(-1) - 1).clamp(min=0)


def _step(
    model: Any,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> tuple[torch.Tensor, Any]:
    """Logits [B, V] for the next token and the updated KV cache."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :], out.past_key_values


def _choose(logp: torch.Tensor, greedy: bool) -> torch.Tensor:
    if greedy:
        return logp.argmax(-1)
    return torch.multinomial(logp.exp(), 1).squeeze(-1)
