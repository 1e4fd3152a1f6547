"""RL against more SFT for the same extra time, from the quickstart's warm start.

For each seed: run the quickstart (SFT warm start on the fixed demonstrations, then GRPO),
then continue SFT from the same warm start on the same demonstrations for as long as GRPO
took, and compare held-out greedy accuracy. Prints a Markdown table (docs/quickstart.md).

    .venv/bin/python scripts/rl_vs_sft.py --seeds 0 1 2 --out runs/rl-vs-sft
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from rewardlab.config import SFTConfig, load_config
from rewardlab.quickstart import packaged_config, run_quickstart
from rewardlab.trainers.sft import train_sft


def more_sft(seed: int, warm_start: Path, seconds: float, run_dir: Path) -> float:
    """Held-out accuracy after ``seconds`` more SFT on the quickstart's demonstrations."""
    config = load_config(
        SFTConfig,
        packaged_config("quickstart_sft.yaml"),
        [
            f"seed={seed}",
            f"run_dir={run_dir}",
            f"model.name={warm_start}",
            "train.epochs=100000",
            f"train.max_seconds={seconds}",
            "train.optim.warmup_steps=0",
        ],
    )
    return train_sft(config).last_eval["eval/accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/rl-vs-sft"))
    args = parser.parse_args()
    console = Console(stderr=True)
    rows = []
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        summary = run_quickstart(seed=seed, root=root, console=console, err_console=console)
        grpo_seconds = _grpo_seconds(root / "grpo")
        sft_acc = more_sft(seed, root / "sft" / "final", grpo_seconds, root / "more-sft")
        rows.append((seed, summary["accuracy_before"], summary["accuracy_after"], sft_acc, grpo_seconds))
    print("| seed | after warm-start SFT | + GRPO | + more SFT (same time) | extra seconds |")
    print("|---|---|---|---|---|")
    for seed, before, rl, sft, secs in rows:
        print(f"| {seed} | {before:.3f} | {rl:.3f} | {sft:.3f} | {secs:.0f} |")


def _grpo_seconds(run_dir: Path) -> float:
    """Training wall time of the GRPO run (rollout + scoring + update, evaluation excluded)."""
    from rewardlab.tracking import read_metrics

    return sum(r.get("time/step", 0.0) for r in read_metrics(run_dir / "metrics.jsonl"))


if __name__ == "__main__":
    main()
