"""The chunked log-prob path (``completion_logprobs``, ``batch_logprobs``) equals the plain one
(full [B, T, V] logits through ``token_logprobs`` / ``token_entropy``) within float tolerance,
in value and in gradient: on the tiny model and on a LoRA-wrapped one, at temperature != 1,
with left-padded prompts and right-padded completions, and with chunks smaller than a row so
that the chunk boundaries cut through sequences."""

from __future__ import annotations

import copy

import pytest
import torch

from rewardlab.config import LoraConfig, ModelConfig
from rewardlab.models import logprobs as lp
from rewardlab.models.loading import add_lora, load_policy
from rewardlab.rollout.hf import SamplingParams, generate

PROMPTS = ["1+1=", "12+34=", "reverse:abcd=", "7*8="]


@pytest.fixture(scope="module")
def tiny():
    return load_policy(ModelConfig(), seed=0)


@pytest.fixture(scope="module")
def rollout(tiny):
    torch.manual_seed(0)
    batch = generate(*tiny, PROMPTS, SamplingParams(n=2, temperature=1.5, max_new_tokens=10))
    for row, end in ((0, 3), (3, 7), (6, 1)):  # completions that ended early: right padding
        batch.completion_mask[row, end:] = 0
        batch.completion_ids[row, end:] = tiny[1].pad_token_id
    assert (batch.prompt_mask == 0).any() and (batch.completion_mask == 0).any()  # padding on both sides
    return batch


def _lora(model):
    model = add_lora(copy.deepcopy(model), LoraConfig(r=4))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _plain(model, batch, temperature):
    logits = lp.forward_completion_logits(model, batch, temperature)
    return lp.token_logprobs(logits, batch.completion_ids), lp.token_entropy(logits)


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def _loss(logp, entropy, batch):
    # Weights of both signs and sizes per token, as advantages and entropy bonuses give.
    mask = batch.completion_mask.float()
    weights = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)
    return ((logp * weights - 0.3 * entropy) * mask).sum() / mask.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_bytes", [None, 5 * 4 * 256])  # default, and chunks of a few positions
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_chunked_equals_plain_values_and_gradients(tiny, rollout, temperature, chunk_bytes, lora, monkeypatch):
    model = _lora(tiny[0]) if lora else tiny[0]
    assert lp._decoder_and_head(model) is not None  # the chunked path is the one under test
    if chunk_bytes is not None:
        monkeypatch.setattr(lp, "CHUNK_BYTES", chunk_bytes)
    plain_logp, plain_ent = _plain(model, rollout, temperature)
    fast_logp, fast_ent = lp.completion_logprobs(model, rollout, temperature, entropy=True)
    torch.testing.assert_close(fast_logp, plain_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_ent, plain_ent, rtol=1e-5, atol=1e-5)
    plain_grads = _grads(model, _loss(plain_logp, plain_ent, rollout))
    fast_grads = _grads(model, _loss(fast_logp, fast_ent, rollout))
    assert len(plain_grads) == len(fast_grads) > 0
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in fast_grads)


def test_gradient_of_logprobs_alone_and_the_head_weight(tiny, rollout):
    """Without the entropy output (the usual policy loss) and with the tied / untied LM head's
    weight receiving its gradient."""
    model = tiny[0]
    plain_logp, _ = _plain(model, rollout, 0.7)
    fast_logp, ent = lp.completion_logprobs(model, rollout, 0.7)
    assert ent is None
    mask = rollout.completion_mask.float()
    (plain_head,) = torch.autograd.grad((plain_logp * mask).sum(), [model.get_output_embeddings().weight])
    (fast_head,) = torch.autograd.grad((fast_logp * mask).sum(), [model.get_output_embeddings().weight])
    torch.testing.assert_close(fast_head, plain_head, rtol=1e-4, atol=1e-6)


def test_batch_logprobs_uses_the_chunked_path_and_matches(tiny, rollout, monkeypatch):
    model = _lora(tiny[0])
    expected = _plain(model, rollout, 0.7)
    with torch.no_grad():
        torch.testing.assert_close(lp.batch_logprobs(model, rollout, 0.7, 3), expected[0], rtol=1e-5, atol=1e-5)
        logp, ent = lp.batch_logprobs_and_entropy(model, rollout, 0.7, 3)
        torch.testing.assert_close(logp, expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, expected[1], rtol=1e-5, atol=1e-5)
        with model.disable_adapter():  # the reference of a LoRA run
            base = _plain(tiny[0], rollout, 0.7)[0]
            torch.testing.assert_close(lp.batch_logprobs(model, rollout, 0.7, 3), base, rtol=1e-5, atol=1e-5)
    calls = []
    monkeypatch.setattr(lp, "forward_completion_logits", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        lp.batch_logprobs(model, rollout, 0.7, 3)
    assert not calls  # no full logits on the no-gradient path


def test_unsupported_head_falls_back_to_the_plain_path(tiny, rollout):
    model = add_lora(copy.deepcopy(tiny[0]), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert lp._decoder_and_head(model) is None
    fast, _ = lp.completion_logprobs(model, rollout, 0.7)
    torch.testing.assert_close(fast, _plain(model, rollout, 0.7)[0])
