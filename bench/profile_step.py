"""Where a rewardlab step spends its time and where its memory peaks, phase by phase.

    python bench/profile_step.py CASE [--steps N] [--warmup W]

Runs the bench case's rewardlab side (``worker.run_rewardlab``) with timers wrapped around
the phases of a step: generation, reward scoring, the no-gradient log-prob passes (old /
reference), the training forward + loss, backward, and the optimizer step. It prints the mean
seconds per step of each phase after the warm-up steps, and, for each phase, how far the
process's peak resident memory rose while it ran (the phase that first reaches the final
peak is the one that sets it). Wrapping module attributes rather than editing the trainers
keeps the profile on the code the bench times.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """Per-step seconds and peak-memory rise of named phases (nested phases count once, in the
    innermost one)."""

    def __init__(self) -> None:
        self.seconds: list[dict[str, float]] = [defaultdict(float)]
        self.counts: list[dict[str, float]] = [defaultdict(float)]  # FLOPs, tokens per step
        self.rise: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []

    def wrap(self, owner: Any, attr: str, name: str, count: Any = None) -> None:
        """Time ``owner.attr`` as phase ``name``; ``count(args, result)`` returns a dict of
        quantities (model FLOPs, generated tokens) to add to this step's counters."""
        inner = getattr(owner, attr, None)
        if inner is None:  # a name this version of the trainers does not import
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.stack:  # pause the enclosing phase
                self._stop(self.stack[-1])
            self.stack.append(name)
            self._start(name)
            try:
                result = inner(*args, **kwargs)
                if count is not None:
                    for key, value in count(args, result).items():
                        self.counts[-1][key] += value
                return result
            finally:
                self._stop(name)
                self.stack.pop()
                if self.stack:
                    self._start(self.stack[-1])

        setattr(owner, attr, timed)

    def _start(self, name: str) -> None:
        self._t0 = time.perf_counter()
        self._m0 = _rss_mb()

    def _stop(self, name: str) -> None:
        self.seconds[-1][name] += time.perf_counter() - self._t0
        self.rise[name] += _rss_mb() - self._m0

    def end_step(self) -> None:
        self.seconds.append(defaultdict(float))
        self.counts.append(defaultdict(float))


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _tokens(batch: Any) -> int:
    """Positions a forward pass over prompt + completion computes (padding included: the
    matmuls run over it too)."""
    return batch.size * (batch.prompt_ids.shape[1] + batch.completion_ids.shape[1])


def forward_flops(args: tuple[Any, ...], result: Any) -> dict[str, float]:
    """~2 FLOPs per parameter per token for a forward pass (attention's quadratic term is
    small at these lengths and left out)."""
    return {"flops": 2.0 * _params(args[0]) * _tokens(args[1])}


def train_flops(args: tuple[Any, ...], result: Any) -> dict[str, float]:
    """Forward + backward: ~6 FLOPs per parameter per token."""
    return {"flops": 6.0 * _params(args[0]) * _tokens(args[1]), "train_flops": 6.0 * _params(args[0]) * _tokens(args[1])}


def generated_tokens(args: tuple[Any, ...], result: Any) -> dict[str, float]:
    return {"generated": float(result.completion_mask.sum())} if hasattr(result, "completion_mask") else {}


def matmul_peak(size: int = 1536, repeats: int = 8) -> float:
    """This machine's float32 matmul FLOP/s with the current thread count: the best of
    ``repeats`` square matmuls (the roof a training step's matmuls could reach)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(HERE))
    import torch
    import worker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(worker.CASES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    import importlib

    from rewardlab.trainers import common, learner, online, preference, preference_views

    phases = Phases()
    # Generation is reached through whichever of these the trainer uses (the rollout engine,
    # per-prompt seeding, or a direct call).
    for module in ("rewardlab.rollout.engine", "rewardlab.rollout.seeded", "rewardlab.trainers.online"):
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        phases.wrap(owner, "generate", "generate", generated_tokens)
        phases.wrap(owner, "generate_from_ids", "generate", generated_tokens)
        phases.wrap(owner, "generate_seeded", "generate", generated_tokens)
    phases.wrap(online, "score", "reward")
    phases.wrap(online, "batch_logprobs_and_entropy", "old/ref logprobs", forward_flops)
    phases.wrap(learner, "micro_batch_loss", "train forward+loss", train_flops)
    phases.wrap(torch.Tensor, "backward", "backward")
    phases.wrap(learner, "clip_and_step", "optimizer")
    phases.wrap(common, "clip_and_step", "optimizer")
    phases.wrap(preference, "clip_and_step", "optimizer")
    phases.wrap(preference_views, "batch_logprobs", "old/ref logprobs", forward_flops)
    phases.wrap(preference, "forward_completion_logits", "train forward+loss", train_flops)
    phases.wrap(preference, "completion_logprobs", "train forward+loss", train_flops)

    case = worker.CASES[args.case]
    out = worker.Measurement("rewardlab", args.case)
    ends = out.step_ends

    class Ends(list):
        def append(self, value: float) -> None:
            super().append(value)
            phases.end_step()

    out.step_ends = Ends(ends)
    torch.manual_seed(worker.SEED)
    before = _rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        worker.run_rewardlab(case, args.steps, out, Path(tmp))
    steps = [dict(s) for s in phases.seconds[args.warmup : len(out.step_ends)]]
    times = [b - a for a, b in itertools.pairwise([out.started, *out.step_ends])][args.warmup :]
    step_s = sum(times) / len(times)
    names = sorted({n for s in steps for n in s}, key=lambda n: -sum(s.get(n, 0.0) for s in steps))
    print(f"{args.case}: {step_s:.3f} s/step over {len(times)} steps (mean)")
    for name in names:
        sec = sum(s.get(name, 0.0) for s in steps) / len(steps)
        print(f"  {name:22s} {sec:8.3f} s  {100 * sec / step_s:5.1f}%   peak RSS rise {phases.rise[name]:7.0f} MB")
    other = step_s - sum(sum(s.values()) for s in steps) / len(steps)
    print(f"  {'other':22s} {other:8.3f} s  {100 * other / step_s:5.1f}%")
    print(f"peak RSS {_rss_mb():.0f} MB (at import / load {before:.0f} MB)")
    counts = [dict(c) for c in phases.counts[args.warmup : len(out.step_ends)]]
    generated = sum(c.get("generated", 0.0) for c in counts)
    gen_s = sum(s.get("generate", 0.0) for s in steps)
    if generated and gen_s:
        print(f"decode: {generated / gen_s:.0f} generated tokens/s inside generation")
    train_s = sum(s.get("train forward+loss", 0.0) + s.get("backward", 0.0) for s in steps)
    train = sum(c.get("train_flops", 0.0) for c in counts)
    if train and train_s:
        peak = matmul_peak()
        achieved = train / train_s
        print(f"training forward+backward: {achieved / 1e9:.1f} GFLOP/s model FLOPs (6 x params x tokens) "
              f"= {100 * achieved / peak:.1f}% of this machine's measured float32 matmul peak "
              f"({peak / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
