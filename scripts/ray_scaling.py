"""Rollout throughput against the number of Ray rollout workers, and whole RL steps local
against Ray (sync, async, reward workers) (docs/ray.md).

Part 1 times ``RayRollout.generate`` on the same prompts with 1..K workers (one torch thread
each) and the local engine in this process, after a warm-up call, and prints completions and
generated tokens per second. Part 2 (``--steps N``) runs ``train`` for N steps with a reward
that waits 20 ms per completion (``scripts/slow_reward.py``, standing in for a sandbox or a
judge) and prints the median step time of each engine setting. Usage:

    python scripts/ray_scaling.py [--model builtin:tiny] [--workers 1 2] [--prompts 16] [--n 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from rewardlab.config import RunConfig
from rewardlab.models.loading import load_policy
from rewardlab.rollout.engine import LocalRollout, RolloutEngine
from rewardlab.rollout.hf import SamplingParams


def measure(engine: RolloutEngine, prompts: list[str], params: SamplingParams, repeats: int) -> dict[str, float]:
    seeds = list(range(len(prompts)))
    engine.generate(prompts, params, seeds)  # warm-up: first forward passes, allocations
    times, tokens = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        batch = engine.generate(prompts, params, [s + 1000 * (r + 1) for s in seeds])
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch.completion_mask.sum()))
    seconds = statistics.median(times)
    return {
        "seconds": seconds,
        "completions_per_s": len(prompts) * params.n / seconds,
        "tokens_per_s": statistics.median(tokens) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="also time N RL steps per engine setting")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray

    from rewardlab.distributed.rollout import RayRollout

    prompts = [f"{i} + {2 * i + 1} = " for i in range(args.prompts)]
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.tokens)
    results: dict[str, dict[str, float]] = {}
    torch.set_num_threads(1)
    config = RunConfig.model_validate({"model": {"name": args.model}})
    policy, tokenizer = load_policy(config.model, seed=0)
    results["local, 1 thread"] = measure(LocalRollout(policy, tokenizer, True), prompts, params, args.repeats)
    torch.set_num_threads(os.cpu_count() or 1)
    results[f"local, {os.cpu_count()} threads"] = measure(LocalRollout(policy, tokenizer, True), prompts, params, args.repeats)
    here = os.path.dirname(os.path.abspath(__file__))  # slow_reward.py, for the reward workers
    env = {"env_vars": {"PYTHONPATH": here}}
    ray.init(num_cpus=max(args.workers + [2]), include_dashboard=False, log_to_driver=False, runtime_env=env)
    for workers in args.workers:
        cfg = RunConfig.model_validate(
            {"model": {"name": args.model}, "engine": "ray",
             "ray": {"rollout_workers": workers, "cpus_per_worker": 1, "torch_threads": 1}}
        )
        engine = RayRollout(cfg, policy, tokenizer.pad_token_id)
        results[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = measure(engine, prompts, params, args.repeats)
        for worker in engine.workers:
            ray.kill(worker)
    steps = time_steps(args) if args.steps else {}
    ray.shutdown()
    print(f"{args.model}: {args.prompts} prompts x {args.n} completions x up to {args.tokens} tokens")
    print("| engine | s per batch | completions/s | tokens/s |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.3f} | {r['completions_per_s']:.1f} | {r['tokens_per_s']:.0f} |")
    if steps:
        print(f"\nRL steps ({args.prompts} prompts x {args.n}, reward waits 20 ms per completion): median s/step")
        print("| engine | s/step |\n|---|---|")
        for name, seconds in steps.items():
            print(f"| {name} | {seconds:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"generate": results, "steps": steps}, f, indent=1)


def time_steps(args: argparse.Namespace) -> dict[str, float]:
    """Median ``time/step`` of short training runs, after the first step."""
    import sys
    import tempfile

    from rewardlab.trainers.online import train

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    base = {
        "model": {"name": args.model},
        "rewards": [{"name": "slow_reward:slow_digits"}],
        "rollout": {"num_generations": args.n, "max_new_tokens": args.tokens, "seeding": "per_prompt"},
        "train": {"steps": args.steps, "prompts_per_step": args.prompts},
        "eval": {"every": 0},
        "checkpoint": {"every": 0},
    }
    ray_base = {"cpus_per_worker": 0.5, "torch_threads": 1}
    settings = {
        "local": {},
        "ray sync, 2 rollout workers": {"engine": "ray", "ray": {**ray_base, "rollout_workers": 2}},
        "ray sync, 2 rollout + 2 reward workers": {
            "engine": "ray", "ray": {**ray_base, "rollout_workers": 2, "reward_workers": 2}},
        "ray async (staleness 1), 2 rollout + 2 reward workers": {
            "engine": "ray", "ray": {**ray_base, "rollout_workers": 2, "reward_workers": 2, "mode": "async"}},
    }
    out: dict[str, float] = {}
    for name, extra in settings.items():
        raw = {**base, **extra, "run_dir": tempfile.mkdtemp(prefix="ray-scaling-") + "/run"}
        if extra:
            raw["rollout"] = {**base["rollout"], "seeding": None}
        seconds: list[float] = []
        train(RunConfig.model_validate(raw), on_step=lambda step, m, seconds=seconds: seconds.append(m["time/step"]) if step > 1 else None)
        out[name] = statistics.median(seconds)
    return out


if __name__ == "__main__":
    main()
