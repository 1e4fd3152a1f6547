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

from functools import partial
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rewardlab.batch import RolloutBatch
from rewardlab.rollout.hf import (
    SamplingParams,
    generate,
    generate_args,
    generate_from_ids,
    tokenize_prompts,
    top_p_filter,
)


class _GumbelSampler(LogitsProcessor):
    """Temperature, top-p, then per-row Gumbel noise; ``generate`` in greedy mode takes the
    argmax of what this returns, which is then a sample. Keeps each step's scores (before the
    noise) so the engine can report the sampling distribution's log-probs."""

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float, keep: bool):
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p
        self.kept: list[torch.Tensor] | None = [] if keep else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        if self.kept is not None:
            self.kept.append(logits)
        noise = torch.stack([gumbel(logits.shape[-1], g) for g in self.generators])
        return torch.log_softmax(logits, dim=-1) + noise


def gumbel(size: int, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise, -log(E) with E ~ Exp(1)."""
    return -torch.empty(size).exponential_(generator=generator).log()


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
    if params.greedy:
        return generate(model, tokenizer, prompts, params)
    if len(seeds) != len(prompts):
        raise ValueError(f"generate_seeded: {len(seeds)} seeds for {len(prompts)} prompts")
    generators = [torch.Generator().manual_seed(row_seed(s, j)) for s in seeds for j in range(params.n)]
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    return generate_from_ids(model, tokenizer, prompt_ids, prompt_mask, params, partial(_decode, generators=generators))


def _decode(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    tokenizer: Any,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """HF ``generate`` in greedy mode over the Gumbel-perturbed scores: one draw per row from
    that row's own generator."""
    sampler = _GumbelSampler(generators, params.temperature, params.top_p, params.logprobs)
    out = model.generate(
        **generate_args(prompt_ids, prompt_mask, params, tokenizer),
        do_sample=False,
        # the model's own sampling defaults must not act on top of the sampler
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=LogitsProcessorList([sampler]),
    )
    return out.sequences, sampler.kept
