"""Evaluation on held-out prompts: greedy accuracy, mean sampled reward, pass@k."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardlab.config import EvalConfig
from rewardlab.data.prompts import Row
from rewardlab.errors import WriteFailed, writing
from rewardlab.rewards import RewardSource, combine_rewards, score_rows
from rewardlab.rollout.hf import SamplingParams, decode_completions, generate


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct.

    "Evaluating Large Language Models Trained on Code" (Chen et al., arXiv 2107.03374), eq. 1:
    pass@k = 1 - C(n - c, k) / C(n, k).
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


def _rewards(
    sources: list[RewardSource], rows: list[Row], completions: list[str], repeat: int
) -> torch.Tensor:
    scores = score_rows(sources, rows, completions, repeat)
    return combine_rewards(scores, {s.name: s.weight for s in sources})


def _complete(
    model: Any, tokenizer: Any, rows: list[Row], params: SamplingParams, batch_size: int
) -> list[str]:
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = [row["prompt"] for row in rows[start : start + batch_size]]
        texts += decode_completions(tokenizer, generate(model, tokenizer, chunk, params))
    return texts


@torch.no_grad()
def evaluate(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    sources: list[RewardSource],
    config: EvalConfig,
    max_new_tokens: int,
    *,
    seed: int,
    num_samples_saved: int = 0,
) -> EvalResult:
    """Score ``model`` on ``rows``: greedy accuracy and mean reward, and with sampling at
    ``config.temperature`` the mean reward and pass@k. The caller's RNG is left untouched."""
    greedy = SamplingParams(n=1, max_new_tokens=max_new_tokens, greedy=True)
    completions = _complete(model, tokenizer, rows, greedy, config.batch_size)
    greedy_rewards = _rewards(sources, rows, completions, 1)
    correct = greedy_rewards >= config.correct_threshold
    metrics = {
        "eval/accuracy": float(correct.float().mean()),
        "eval/reward_greedy": float(greedy_rewards.mean()),
    }
    n = config.num_samples or config.pass_k
    if n >= config.pass_k:
        sampled = SamplingParams(
            n=n, temperature=config.temperature, max_new_tokens=max_new_tokens
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            texts = _complete(model, tokenizer, rows, sampled, max(1, config.batch_size // n))
        rewards = _rewards(sources, rows, texts, n).view(len(rows), n)
        hits = (rewards >= config.correct_threshold).sum(-1).tolist()
        metrics["eval/reward_sampled"] = float(rewards.mean())
        metrics[f"eval/pass@{config.pass_k}"] = sum(
            pass_at_k(n, int(c), config.pass_k) for c in hits
        ) / len(rows)
    samples = [
        {**_extra(row), "prompt": row["prompt"], "completion": text, "reward": float(r)}
        for row, text, r in zip(rows, completions, greedy_rewards.tolist(), strict=True)
    ][:num_samples_saved]
    return EvalResult(metrics, samples)


def _extra(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "prompt" and _is_json(v)}


def _is_json(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def write_samples(run_dir: Path, step: int, samples: list[dict[str, Any]]) -> Path:
    """``samples/step-<step>.jsonl``: completions and rewards at one evaluation (atomic)."""
    folder = run_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.jsonl"
    tmp = path.with_suffix(".tmp")
    then = f"the checkpoints written before are intact; once there is room, resume with --resume {run_dir}"
    try:
        with writing(f"the samples of step {step}", path, then):
            tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
    except WriteFailed:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
