"""Sampling where every completion has its own random stream (``rollout.seeding: per_prompt``).

``generate`` draws all rows of a batch from torch's one global generator, so a completion
depends on which other prompts share its batch. A distributed rollout splits the batch over
workers; for its samples to equal a single process's, each completion must be a function of
its own prompt and seed only. Here each row samples with the Gumbel-max trick from a private
``torch.Generator``: argmax(log p + g) with g ~ Gumbel(0, 1) is a draw from p, and the noise a
row sees does not depend on the rest of the batch. The log-probs differ between two batchings
only by float rounding of the forward pass (left padding changes), which flips a draw only at
an exact near-tie.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rewardlab.batch import RolloutBatch
from rewardlab.rollout.hf import SamplingParams, completion_mask, tokenize_prompts


class _GumbelSampler(LogitsProcessor):
    """Temperature, top-p, then per-row Gumbel noise; ``generate`` in greedy mode takes the
    argmax of what this returns, which is then a sample. Keeps each step's log-probs (before
    the noise) so the engine can report the sampling distribution's log-probs."""

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float, keep: bool):
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p
        self.keep = keep
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            logits = nucleus(logits, self.top_p)
        logp = torch.log_softmax(logits, dim=-1)
        if self.keep:
            self.logps.append(logp)
        noise = torch.stack([gumbel(logp.shape[-1], g) for g in self.generators])
        return logp + noise


def gumbel(size: int, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise, -log(E) with E ~ Exp(1)."""
    return -torch.empty(size).exponential_(generator=generator).log()


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (the rule of
    HF's top-p warper: drop tokens whose cumulative mass, counted from the least likely, is at
    most 1 - top_p; the most likely token always stays)."""
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def row_seed(prompt_seed: int, completion: int) -> int:
    """The seed of one completion of a prompt."""
    return (prompt_seed * 1_000_033 + completion * 104_729 + 17) % (2**63 - 1)


@torch.no_grad()
def generate_seeded(
    model: Any, tokenizer: Any, prompts: list[str], params: SamplingParams, seeds: list[int]
) -> RolloutBatch:
    """``params.n`` completions per prompt as ``hf.generate`` returns them, each completion
    drawn with its own generator (``seeds``: one per prompt). Greedy decoding needs no seed
    and goes through the plain path."""
    from rewardlab.rollout.hf import generate

    if params.greedy:
        return generate(model, tokenizer, prompts, params)
    if len(seeds) != len(prompts):
        raise ValueError(f"generate_seeded: {len(seeds)} seeds for {len(prompts)} prompts")
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    prompt_ids = prompt_ids.repeat_interleave(params.n, 0)
    prompt_mask = prompt_mask.repeat_interleave(params.n, 0)
    generators = [torch.Generator().manual_seed(row_seed(s, j)) for s in seeds for j in range(params.n)]
    sampler = _GumbelSampler(generators, params.temperature, params.top_p, params.logprobs)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            do_sample=False,
            # the model's own sampling defaults must not act on top of the sampler
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=LogitsProcessorList([sampler]),
            return_dict_in_generate=True,
        )
    finally:
        model.train(was_training)
    completion_ids = out.sequences[:, prompt_ids.shape[1] :]
    mask, truncated = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    group = torch.arange(len(prompts)).repeat_interleave(params.n)
    batch = RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, group, truncated)
    if params.logprobs:
        logp = torch.stack(sampler.logps, dim=1)
        picked = logp.gather(-1, completion_ids[:, : logp.shape[1], None]).squeeze(-1)
        batch.sampling_logp = torch.where(mask.bool(), picked, torch.zeros_like(picked))
    return batch
