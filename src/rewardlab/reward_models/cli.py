"""``rewardlab rm``: train a Bradley-Terry reward model, evaluate one.

Mounted on the main app by ``rewardlab.cli``; user mistakes raise ``RewardlabError``, which
the main entry point prints as one line (exit status 2). Self-contained (its own consoles)
because ``rewardlab.cli`` runs as ``__main__`` under ``python -m`` and importing it back
from here would load a second copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

rm_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Reward models: Bradley-Terry training on pairs, and evaluation on held-out pairs.",
)
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@rm_app.command("train")
def rm_train(
    config: Annotated[
        Path | None, typer.Argument(help="Reward-model config (YAML). Omit to use the defaults.", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key: --set loss.center_coef=0.01 (repeatable)."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder from its last checkpoint."),
    ] = None,
) -> None:
    """Train a scalar reward model with the Bradley-Terry loss (optional margin, centering),
    an ensemble of them (``ensemble:``), or a general preference model (a ``gpm:`` section)."""
    from rewardlab.config import load_config
    from rewardlab.reward_models.config import RewardModelConfig

    if resume is not None and config is None:
        from rewardlab.trainers.common import resume_config_file

        config = resume_config_file(resume, "rewardlab rm train", "runs/rm-20261122-120000")
    if _is_gpm_config(config, set_):
        _train_gpm(config, set_, resume)
        return
    # Validate before importing torch and transformers: a config mistake is reported at once.
    cfg = load_config(RewardModelConfig, config, set_)
    _quiet_libraries()
    from rewardlab.reward_models.trainer import train_reward_model
    from rewardlab.tracking.progress import ProgressView

    with ProgressView("RM (Bradley-Terry)", err_console) as view:
        result = train_reward_model(cfg, resume=resume, on_start=view.start, on_step=view.step)
    if result.skipped_rows:
        err_console.print(f"[yellow]skipped {result.skipped_rows} bad dataset rows[/yellow] (data.skip_bad_rows is on)")
    _print_metrics("before", result.first_eval)
    _print_metrics("after", result.last_eval)
    console.print(f"model: {result.run_dir / 'final'}  ({result.steps} steps, {result.seconds:.0f} s)")


def _is_gpm_config(config: Path | None, set_: list[str] | None) -> bool:
    """A ``gpm:`` section (in the file or set with --set) makes the run a general preference
    model's."""
    from rewardlab.config import load_yaml

    in_file = config is not None and config.is_file() and "gpm" in load_yaml(config)
    return in_file or any(item.split("=", 1)[0].strip().split(".")[0] == "gpm" for item in set_ or [])


def _train_gpm(config: Path | None, set_: list[str] | None, resume: Path | None) -> None:
    from rewardlab.config import load_config
    from rewardlab.reward_models.gpm_trainer import GPMConfig, train_gpm
    from rewardlab.tracking.progress import ProgressView

    cfg = load_config(GPMConfig, config, set_)
    _quiet_libraries()
    with ProgressView("GPM", err_console) as view:
        result = train_gpm(cfg, resume=resume, on_start=view.start, on_step=view.step)
    _print_metrics("before", result.first_eval)
    _print_metrics("after", result.last_eval)
    console.print(f"model: {result.run_dir / 'final'}  ({result.steps} steps, {result.seconds:.0f} s)")


@rm_app.command("eval")
def rm_eval(
    target: Annotated[Path, typer.Argument(help="A reward model folder or an `rm train` run folder.")],
    data: Annotated[
        Path | None, typer.Option(help="Pairwise file (prompt/chosen/rejected[/margin]); default: the run's held-out pairs.")
    ] = None,
    margin_column: Annotated[str | None, typer.Option(help="Margin column for the buckets [default: the run's, or margin].")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip bad rows of --data instead of stopping.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    bins: Annotated[int, typer.Option(min=1, help="Calibration bins.")] = 10,
    buckets: Annotated[int, typer.Option(min=1, help="Accuracy buckets.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics and buckets as JSON.")] = False,
) -> None:
    """Pairwise accuracy, calibration (ECE, Brier) and accuracy by margin bucket."""
    from rewardlab.reward_models.evaluate import evaluate_saved

    _quiet_libraries()
    found = evaluate_saved(
        target, data, margin_column=margin_column, skip_bad_rows=skip_bad_rows,
        batch_size=batch_size, bins=bins, buckets=buckets,
    )
    if as_json:
        payload = {"metrics": found.metrics, "bucket_by": found.bucket_by, "buckets": [vars(b) for b in found.buckets]}
        console.print_json(json.dumps(payload))
        return
    _print_metrics(str(target), found.metrics)
    table = Table(title=f"accuracy by {found.bucket_by.replace('_', ' ')}", title_justify="left")
    for column in ("from", "to", "pairs", "accuracy"):
        table.add_column(column, justify="right")
    for b in found.buckets:
        table.add_row(f"{b.lo:.3g}", f"{b.hi:.3g}", str(b.count), f"{b.accuracy:.3f}")
    console.print(table)


def _print_metrics(label: str, metrics: dict[str, float]) -> None:
    if not metrics:
        return
    shown = "  ".join(
        f"{k.removeprefix('eval/')}={v:.3f}" for k, v in sorted(metrics.items()) if "bucket" not in k
    )
    console.print(f"[bold]{label}[/bold]: {shown}")
