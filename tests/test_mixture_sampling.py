"""Nash-MD's geometric-mixture sampler: the formula, its endpoints, the KV-cache decoding with
left padding, the batch layout of ``generate``, the sampling frequencies, and LoRA references."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from rewardlab.batch import RolloutBatch
from rewardlab.config import LoraConfig, ModelConfig
from rewardlab.models.loading import load_policy
from rewardlab.models.logprobs import forward_completion_logits, token_logprobs
from rewardlab.rollout.hf import SamplingParams, generate, tokenize_prompts
from rewardlab.rollout.mixture import generate_mixture, mixture_logprobs
from rewardlab.trainers.learner import make_reference, reference_mode

# Different lengths, so that rows are left-padded by different amounts.
PROMPTS = ["1+1=", "12+34=", "reverse:abcd="]
LAYOUT_FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "group",
    "truncated",
)


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any, Any]:
    """A policy and a reference that are different networks (different init seeds)."""
    policy, tokenizer = load_policy(ModelConfig(), seed=0)
    reference, _ = load_policy(ModelConfig(), seed=1)
    return policy, reference, tokenizer


@contextmanager
def eos_boost(models: list[Any], eos_id: int, bias: float) -> Iterator[None]:
    """Add ``bias`` to the EOS logit: a randomly initialized model almost never ends a
    completion, and the layout checks need rows that stop at different steps."""
    def add_bias(_module: Any, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        shift = torch.zeros(logits.shape[-1], dtype=logits.dtype)
        shift[eos_id] = bias
        return logits + shift

    handles = [m.lm_head.register_forward_hook(add_bias) for m in models]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def assert_same_layout(ours: RolloutBatch, theirs: RolloutBatch) -> None:
    for name in LAYOUT_FIELDS:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def full_pass_mixture_logp(
    policy: Any, reference: Any, batch: RolloutBatch, mix: float, temperature: float
) -> torch.Tensor:
    """The mixture log-probs of the batch's tokens from one uncached forward pass per model."""
    policy_logits = forward_completion_logits(policy, batch, temperature)
    with reference_mode(reference) as ref:
        ref_logits = forward_completion_logits(ref, batch, temperature)
    logp = mixture_logprobs(policy_logits, ref_logits, mix, temperature=1.0)
    return logp.gather(-1, batch.completion_ids[..., None]).squeeze(-1)


# --------------------------------------------------------------------------- the formula


def test_mixture_logprobs_matches_a_hand_computed_example() -> None:
    # Policy proportional to [4, 1, 1], reference to [1, 1, 4]; offsets must not matter.
    policy = torch.tensor([math.log(4), 0.0, 0.0]) + 3.0
    ref = torch.tensor([0.0, 0.0, math.log(4)]) - 1.0
    # m = 1/2: sqrt([4, 1, 4]) = [2, 1, 2] -> [0.4, 0.2, 0.4] (the arithmetic mixture would
    # give [5/12, 2/12, 5/12]).
    got = mixture_logprobs(policy, ref, mix=0.5, temperature=1.0).exp()
    torch.testing.assert_close(got, torch.tensor([0.4, 0.2, 0.4]))
    # Temperature 1/2 squares the mixture: [4, 1, 4] / 9.
    got = mixture_logprobs(policy, ref, mix=0.5, temperature=0.5).exp()
    torch.testing.assert_close(got, torch.tensor([4 / 9, 1 / 9, 4 / 9]))
    # m = 1/4: [4^(3/4), 1, 4^(1/4)] = [2^1.5, 1, 2^0.5].
    unnormalized = torch.tensor([2**1.5, 1.0, 2**0.5])
    got = mixture_logprobs(policy, ref, mix=0.25, temperature=1.0).exp()
    torch.testing.assert_close(got, unnormalized / unnormalized.sum())


def test_mix_endpoints_are_the_models_and_masked_tokens_stay_finite() -> None:
    gen = torch.Generator().manual_seed(0)
    policy = torch.randn(2, 3, 11, generator=gen) * 3
    ref = torch.randn(2, 3, 11, generator=gen) * 3
    ref[..., 4] = float("-inf")  # a token the reference forbids
    t = 0.7
    at_policy = mixture_logprobs(policy, ref, 0.0, t)
    at_ref = mixture_logprobs(policy, ref, 1.0, t)
    torch.testing.assert_close(at_policy, torch.log_softmax(policy / t, -1))
    torch.testing.assert_close(at_ref, torch.log_softmax(ref / t, -1))
    mid = mixture_logprobs(policy, ref, 0.3, t)
    assert not mid.isnan().any()
    assert (mid[..., 4] == float("-inf")).all()
    torch.testing.assert_close(mid.exp().sum(-1), torch.ones(2, 3))


def test_invalid_arguments_are_rejected(models: tuple[Any, Any, Any]) -> None:
    policy, reference, tokenizer = models
    logits = torch.zeros(3)
    with pytest.raises(ValueError, match="mix"):
        mixture_logprobs(logits, logits, mix=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        params = SamplingParams(top_p=0.9)
        generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.5)


# --------------------------------------------------------------------------- decoding


def test_greedy_endpoints_equal_greedy_generation_of_each_model(
    models: tuple[Any, Any, Any],
) -> None:
    policy, reference, tokenizer = models
    params = SamplingParams(n=2, greedy=True, max_new_tokens=8)
    from_policy = generate(policy, tokenizer, PROMPTS, params)
    from_reference = generate(reference, tokenizer, PROMPTS, params)
    assert not torch.equal(from_policy.completion_ids, from_reference.completion_ids)
    at_policy = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.0)
    at_reference = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=1.0)
    assert_same_layout(at_policy, from_policy)
    assert_same_layout(at_reference, from_reference)


def test_sampling_logp_equals_a_full_forward_pass_of_both_models(
    models: tuple[Any, Any, Any],
) -> None:
    """The KV-cache loop (positions and masks under left padding) must give the same mixture as
    an uncached pass over prompt + completion, the way the learner computes log-probs."""
    policy, reference, tokenizer = models
    params = SamplingParams(n=3, temperature=0.7, max_new_tokens=6, logprobs=True)
    torch.manual_seed(0)
    with eos_boost([policy, reference], tokenizer.eos_token_id, 4.0):
        batch = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.4)
        expected = full_pass_mixture_logp(policy, reference, batch, mix=0.4, temperature=0.7)
    mask = batch.completion_mask.bool()
    assert batch.sampling_logp is not None
    assert (~batch.truncated).any() and mask.sum() > batch.size  # some rows stopped early
    torch.testing.assert_close(batch.sampling_logp[mask], expected[mask], atol=1e-4, rtol=1e-4)
    assert (batch.sampling_logp[~mask] == 0).all()


def test_batch_layout_matches_generate(models: tuple[Any, Any, Any]) -> None:
    policy, reference, tokenizer = models
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, logprobs=True)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    with eos_boost([policy, reference], eos, 4.5):
        torch.manual_seed(3)
        batch = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.5)
        # At mix = 0 the sampler draws from the policy's softmax(logits / T) with one
        # multinomial call per step, as generate() does: same seed, same tokens.
        torch.manual_seed(3)
        ours = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.0)
        torch.manual_seed(3)
        theirs = generate(policy, tokenizer, PROMPTS, params)
    assert_same_layout(ours, theirs)
    assert ours.sampling_logp is not None and theirs.sampling_logp is not None
    torch.testing.assert_close(ours.sampling_logp, theirs.sampling_logp, atol=1e-5, rtol=1e-5)

    ids, mask = tokenize_prompts(tokenizer, PROMPTS)
    assert torch.equal(batch.prompt_ids, ids.repeat_interleave(4, 0))
    assert torch.equal(batch.prompt_mask, mask.repeat_interleave(4, 0))
    assert batch.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    lengths = batch.completion_mask.sum(-1)
    assert batch.truncated.any() and (~batch.truncated).any()
    assert len(set(lengths.tolist())) > 2
    assert batch.completion_ids.shape[1] == params.max_new_tokens
    rows = zip(batch.completion_ids, lengths.tolist(), batch.truncated.tolist(), strict=True)
    for row, length, truncated in rows:
        eos_at = (row == eos).nonzero().flatten().tolist()
        assert truncated == (not eos_at)
        if eos_at:
            assert length == eos_at[0] + 1  # the mask includes the EOS
            assert (row[length:] == pad).all()
        else:
            assert length == params.max_new_tokens


def test_decoding_stops_when_every_row_has_ended(models: tuple[Any, Any, Any]) -> None:
    policy, reference, tokenizer = models
    params = SamplingParams(n=2, max_new_tokens=8)
    with eos_boost([policy, reference], tokenizer.eos_token_id, 50.0):
        batch = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.5)
    assert batch.completion_ids.tolist() == [[tokenizer.eos_token_id]] * 6
    assert batch.completion_mask.tolist() == [[1]] * 6
    assert not batch.truncated.any()


def test_first_token_frequencies_match_the_mixture(models: tuple[Any, Any, Any]) -> None:
    policy, reference, tokenizer = models
    prompt, n, mix, temperature = "12+34=", 4000, 0.5, 0.1  # low T: peaked, distinct models
    torch.manual_seed(0)
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=1)
    batch = generate_mixture(policy, reference, tokenizer, [prompt], params, mix)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        a = policy(input_ids=ids).logits[0, -1]
        b = reference(input_ids=ids).logits[0, -1]
    # The closed form of the geometric mixture, independent of mixture_logprobs.
    expected = torch.softmax(((1 - mix) * a + mix * b) / temperature, -1)
    p, q = torch.softmax(a / temperature, -1), torch.softmax(b / temperature, -1)
    freq = torch.bincount(batch.completion_ids[:, 0], minlength=expected.numel()).float() / n
    tolerance = 0.025  # about 4 standard deviations of the largest frequency (~0.17)
    for wrong in (p, q, (p + q) / 2):  # the check must be able to tell these apart
        assert (wrong - expected).abs().max() > 3 * tolerance
    assert (freq - expected).abs().max() < tolerance


# --------------------------------------------------------------------------- LoRA


def test_lora_policy_mixes_with_itself_adapter_disabled() -> None:
    policy, tokenizer = load_policy(ModelConfig(lora=LoraConfig(r=4)), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh adapter is the identity (B = 0); make it a different policy
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    reference = make_reference(policy)
    assert reference is policy
    policy.train()

    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=6)
    adapted = generate(policy, tokenizer, PROMPTS, greedy)
    with reference_mode(reference) as ref:
        base = generate(ref, tokenizer, PROMPTS, greedy)
    assert not torch.equal(adapted.completion_ids, base.completion_ids)
    at_policy = generate_mixture(policy, reference, tokenizer, PROMPTS, greedy, mix=0.0)
    at_reference = generate_mixture(policy, reference, tokenizer, PROMPTS, greedy, mix=1.0)
    assert_same_layout(at_policy, adapted)
    assert_same_layout(at_reference, base)

    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=5, logprobs=True)
    torch.manual_seed(0)
    batch = generate_mixture(policy, reference, tokenizer, PROMPTS, params, mix=0.5)
    assert policy.training  # the caller's mode is restored
    policy.eval()
    expected = full_pass_mixture_logp(policy, reference, batch, mix=0.5, temperature=0.8)
    mask = batch.completion_mask.bool()
    assert batch.sampling_logp is not None
    torch.testing.assert_close(batch.sampling_logp[mask], expected[mask], atol=1e-4, rtol=1e-4)
    # Mixing with the adapter disabled differs from mixing the adapted policy with itself.
    policy_logits = forward_completion_logits(policy, batch, 0.8)
    policy_only = token_logprobs(policy_logits, batch.completion_ids)
    assert (policy_only[mask] - expected[mask]).abs().max() > 1e-2
