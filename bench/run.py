"""Side-by-side benchmark of rewardlab and TRL on identical work.

    python bench/run.py [CASE ...] [--steps N] [--warmup W] [--json OUT] [--markdown OUT]

Each case runs rewardlab, then TRL, each in a fresh process (``bench/worker.py``), and
reports the median seconds per optimizer step after ``--warmup`` steps, generated tokens per
second (GRPO), peak resident memory, and each ratio rewardlab / TRL. The numbers mean
something only on an otherwise idle machine; the thread count is whatever the environment
gives (set OMP_NUM_THREADS to pin it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
LIBS = ("rewardlab", "trl")


def measure(lib: str, case: str, steps: int) -> dict[str, Any]:
    """Run one worker process and return its measurement."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = dict(os.environ, PYTHONPATH=str(HERE))
        done = subprocess.run(
            [sys.executable, str(HERE / "worker.py"), lib, case, str(steps), str(out)],
            capture_output=True, text=True, env=env, check=False,
        )
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{lib} {case} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarize(raw: dict[str, Any], warmup: int) -> dict[str, float]:
    """Median step seconds after warm-up, generated tokens per second over those steps, and
    peak memory."""
    ends = [raw["started"], *raw["step_ends"]]
    times = [b - a for a, b in itertools.pairwise(ends)][warmup:]
    if not times:
        raise RuntimeError(f"{raw['lib']} {raw['case']}: no steps left after {warmup} warm-up steps")
    tokens = raw["completion_tokens"][warmup:]
    out = {"step_s": statistics.median(times), "peak_rss_mb": raw["peak_rss_mb"], "steps": len(times)}
    if tokens and sum(tokens):
        out["tokens_per_s"] = sum(tokens) / sum(times)
    return out


def run_case(case: str, steps: int, warmup: int) -> dict[str, Any]:
    result: dict[str, Any] = {"case": case}
    for lib in LIBS:
        result[lib] = summarize(measure(lib, case, steps), warmup)
    ours, theirs = result["rewardlab"], result["trl"]
    result["ratio"] = {
        key: ours[key] / theirs[key] for key in ("step_s", "peak_rss_mb", "tokens_per_s") if key in ours and key in theirs
    }
    return result


def machine() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | rewardlab s/step | TRL s/step | ratio | rewardlab MB | TRL MB | ratio | rewardlab tok/s | TRL tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, theirs, ratio = r["rewardlab"], r["trl"], r["ratio"]
        lines.append(
            f"| {r['case']} | {ours['step_s']:.3f} | {theirs['step_s']:.3f} | {ratio['step_s']:.2f} "
            f"| {ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} | {ratio['peak_rss_mb']:.2f} "
            f"| {ours.get('tokens_per_s', float('nan')):.0f} | {theirs.get('tokens_per_s', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(HERE))
    from worker import CASES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["grpo-tiny", "grpo-tiny-kl", "dpo-tiny"], choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    results = [run_case(case, args.steps, args.warmup) for case in args.cases]
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": sys.argv[1:], "results": results}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
