"""``rewardlab quickstart``: SFT warm-start of the built-in tiny model on a few arithmetic
demonstrations, then GRPO on fresh prompts scored only by the verifier.

This is the situation RL is for: demonstrations are scarce, a verifier is cheap. The two
runs' configs ship with the package (``rewardlab/configs/quickstart_*.yaml``) and are saved,
fully resolved, in each run folder.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from rewardlab.config import RunConfig, SFTConfig, load_config
from rewardlab.errors import RewardlabError
from rewardlab.tracking.progress import ProgressView
from rewardlab.trainers.common import FINAL_MODEL
from rewardlab.trainers.online import train
from rewardlab.trainers.sft import train_sft


def packaged_config(name: str) -> Path:
    """The path of a config shipped inside the package."""
    return Path(str(resources.files("rewardlab") / "configs" / name))


def run_quickstart(
    *, seed: int, root: Path | None, console: Console, err_console: Console
) -> dict[str, Any]:
    """Run SFT then GRPO under ``root``; returns the summary the CLI can write as JSON."""
    started = time.perf_counter()
    root = root or Path("runs") / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    if root.exists() and any(root.iterdir()):
        raise RewardlabError(f"--run-dir {root} is not empty; choose a new folder for the quickstart")
    common = [f"seed={seed}"]
    sft_cfg = load_config(
        SFTConfig, packaged_config("quickstart_sft.yaml"), [*common, f"run_dir={root / 'sft'}"]
    )
    rl_cfg = load_config(
        RunConfig,
        packaged_config("quickstart_grpo.yaml"),
        [*common, f"run_dir={root / 'grpo'}", f"model.name={root / 'sft' / FINAL_MODEL}"],
    )
    console.print(
        f"[bold]1/2 SFT[/bold]: warm-start builtin:tiny on {sft_cfg.data.num_examples} fixed "
        f"demonstrations of '{sft_cfg.data.task}'"
    )
    with ProgressView("SFT", err_console) as view:
        train_sft(sft_cfg, on_start=view.start, on_step=view.step)
    console.print(
        f"[bold]2/2 GRPO[/bold]: {rl_cfg.train.steps} steps x {rl_cfg.train.prompts_per_step} fresh "
        f"prompts x {rl_cfg.rollout.num_generations} samples, scored only by the verifier"
    )
    with ProgressView("GRPO", err_console) as view:
        result = train(rl_cfg, on_start=view.start, on_step=view.step)
    summary = {
        "accuracy_before": result.first_eval["eval/accuracy"],
        "accuracy_after": result.last_eval["eval/accuracy"],
        "seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(root),
    }
    n = len(result.first_eval) and rl_cfg.data.heldout_size
    console.print(
        f"held-out accuracy ({n} prompts, greedy): before RL {summary['accuracy_before']:.3f} "
        f"-> after RL {summary['accuracy_after']:.3f}   ({summary['seconds']:.0f} s)"
    )
    console.print(f"report: {result.run_dir / 'report' / 'overview.png'}")
    return summary
