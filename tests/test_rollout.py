"""Generation and log-probs agree: the learner sees the distribution the sampler drew from."""

from __future__ import annotations

import torch

from rewardlab.config import ModelConfig
from rewardlab.models.loading import load_policy
from rewardlab.models.logprobs import batch_logprobs, token_logprobs
from rewardlab.rollout.hf import SamplingParams, completion_mask, generate, tokenize_prompts


def test_completion_mask_keeps_tokens_up_to_and_including_first_eos() -> None:
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask, truncated = completion_mask(ids, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_prompts_are_left_padded() -> None:
    _, tokenizer = load_policy(ModelConfig())
    ids, mask = tokenize_prompts(tokenizer, ["1+1=", "12+34="])
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert ids[0, :2].tolist() == [tokenizer.pad_token_id] * 2


def test_training_logprobs_equal_the_sampling_distribution_despite_left_padding() -> None:
    """Recompute the log-probs of sampled tokens with one forward pass (as the learner does)
    and compare with the logits generate() sampled from, for prompts of different lengths."""
    model, tokenizer = load_policy(ModelConfig(), seed=0)
    torch.manual_seed(0)
    prompts = ["1+1=", "12+34=", "reverse:abcd="]
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=6)
    batch = generate(model, tokenizer, prompts, params)

    torch.manual_seed(0)
    ids = batch.prompt_ids
    out = model.generate(
        input_ids=ids,
        attention_mask=batch.prompt_mask,
        max_new_tokens=6,
        do_sample=True,
        temperature=0.7,
        top_p=1.0,
        top_k=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    sampler_logits = torch.stack(out.logits, dim=1) / 0.7  # [B, T, V], before sampling warpers
    width = batch.completion_ids.shape[1]
    expected = token_logprobs(sampler_logits[:, :width], batch.completion_ids)
    ours = batch_logprobs(model, batch, temperature=0.7, micro_batch=4)
    mask = batch.completion_mask.bool()
    assert mask.sum() > len(prompts) * 2  # something was generated
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-4, rtol=1e-4)
