"""The lean decode loop in ``rollout/hf.py`` reproduces Hugging Face ``generate`` exactly.

Seeded runs everywhere (tests, resumed runs, the quickstart's numbers) depend on the samples,
so the loop may replace ``generate`` only if, for the same torch seed, it draws the same
tokens, leaves the global RNG in the same state, and reports the same scores. Each case
decodes once with the lean loop and once with ``generate`` from the same seed and compares
bitwise: several seeds, prompts of different lengths (left padding), temperature != 1,
top-p < 1, greedy, a LoRA model, and ``logprobs=True``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rewardlab.config import LoraConfig, ModelConfig
from rewardlab.models.loading import add_lora, load_policy
from rewardlab.rollout import hf
from rewardlab.rollout.hf import SamplingParams, generate

PROMPTS = ["1+1=", "12+34=", "reverse:abcd=", "7*8="]


@pytest.fixture(scope="module")
def tiny():
    return load_policy(ModelConfig(), seed=0)


@pytest.fixture(scope="module")
def lora(tiny):
    model = add_lora(copy.deepcopy(tiny[0]), LoraConfig(r=4))
    with torch.no_grad():  # a non-zero adapter, so that the LoRA layers change the samples
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, tiny[1]


def _both(model, tokenizer, params: SamplingParams, seed: int, monkeypatch):
    """The batch from the lean loop and from ``generate``, each from ``seed``, and the RNG
    state each left behind."""
    out = []
    for lean in (True, False):
        monkeypatch.setattr(hf, "LEAN_DECODE", lean)
        torch.manual_seed(seed)
        batch = generate(model, tokenizer, PROMPTS, params)
        out.append((batch, torch.get_rng_state()))
    return out


def _assert_same(lean, plain) -> None:
    (a, rng_a), (b, rng_b) = lean, plain
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.truncated, b.truncated)
    assert torch.equal(rng_a, rng_b)  # later draws in a seeded run stay the same too
    if b.sampling_logp is not None:
        assert a.sampling_logp is not None
        assert torch.equal(a.sampling_logp, b.sampling_logp)


def test_lean_decode_is_used_for_the_builtin_model(tiny):
    assert hf.lean_decode_applies(tiny[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=3, temperature=1.0, max_new_tokens=12),
        SamplingParams(n=3, temperature=0.7, max_new_tokens=12, logprobs=True),
        SamplingParams(n=2, temperature=1.3, top_p=0.8, max_new_tokens=12, logprobs=True),
    ],
    ids=["t1", "t0.7-logprobs", "t1.3-top_p0.8-logprobs"],
)
def test_sampling_equals_generate(tiny, params, seed, monkeypatch):
    _assert_same(*_both(*tiny, params, seed, monkeypatch))


def test_greedy_equals_generate(tiny, monkeypatch):
    params = SamplingParams(n=1, greedy=True, max_new_tokens=16, logprobs=True)
    _assert_same(*_both(*tiny, params, 0, monkeypatch))


@pytest.mark.parametrize("seed", [0, 5])
def test_lora_model_equals_generate(lora, seed, monkeypatch):
    assert hf.lean_decode_applies(lora[0])
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10, logprobs=True)
    _assert_same(*_both(*lora, params, seed, monkeypatch))
    with lora[0].disable_adapter():  # the reference policy of a LoRA run decodes the same way
        _assert_same(*_both(*lora, params, seed, monkeypatch))


def test_prompts_without_padding_equal_generate(tiny, monkeypatch):
    """Without padding ``generate`` drops the attention mask; the lean loop must too."""
    model, tokenizer = tiny
    params = SamplingParams(n=4, temperature=0.9, max_new_tokens=10, logprobs=True)
    for seed in (0, 1):
        out = []
        for lean in (True, False):
            monkeypatch.setattr(hf, "LEAN_DECODE", lean)
            torch.manual_seed(seed)
            out.append((generate(model, tokenizer, ["1+1=", "2+3="], params), torch.get_rng_state()))
        _assert_same(*out)


def test_stops_early_when_every_row_has_ended(tiny, monkeypatch):
    """Rows that end early are padded and the loop stops once all have ended, as ``generate``
    does (a loop that ran on would draw extra random numbers and shift later samples)."""
    model, tokenizer = tiny
    params = SamplingParams(n=4, temperature=3.0, max_new_tokens=40)
    for seed in range(3):
        lean, plain = _both(model, tokenizer, params, seed, monkeypatch)
        _assert_same(lean, plain)


def test_a_generation_config_with_a_processor_falls_back_to_generate(tiny):
    model = copy.deepcopy(tiny[0])
    model.generation_config.repetition_penalty = 1.2
    assert not hf.lean_decode_applies(model)
