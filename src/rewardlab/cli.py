"""The ``rewardlab`` command: train | sft | eval | rm | bon | serve | judge | list | report | quickstart.

User mistakes (``RewardlabError``) print one red line and exit with status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rewardlab.errors import RewardlabError, StopRequested

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Reward modeling and policy optimization for language models.",
)
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set train.optim.lr=1e-4 (repeatable)."),
]
ConfigArg = Annotated[
    Path | None, typer.Argument(help="Run config (YAML). Omit to use the defaults.", show_default=False)
]


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, hub notices) off the user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command()
def train(
    config: ConfigArg = None,
    set_: SetOption = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this folder from its last checkpoint.")
    ] = None,
) -> None:
    """Online RL (GRPO, Dr. GRPO, RLOO, ...): generate, score, update, evaluate, checkpoint.

    A config with a ``preference:`` section runs offline preference optimization (DPO, IPO,
    SimPO, KTO, ...) on prompt/chosen/rejected pairs instead."""
    from rewardlab.config import RunConfig, load_config
    from rewardlab.trainers.online import train as run_train

    _quiet_libraries()
    if resume is not None and config is None:
        from rewardlab.trainers.common import resume_config_file

        config = resume_config_file(resume, "rewardlab train", "runs/train-20261122-120000")
    if _is_preference_config(config, set_):
        _train_preference(config, set_, resume)
        return
    cfg = load_config(RunConfig, config, set_)
    from rewardlab.tracking.progress import ProgressView

    with _interruptible(), ProgressView(cfg.algorithm.recipe.upper(), err_console) as view:
        result = run_train(cfg, resume=resume, on_start=view.start, on_step=view.step)
    _print_skipped(result.skipped_rows)
    _print_eval("before", result.first_eval)
    _print_eval("after", result.last_eval)
    console.print(f"run folder: {result.run_dir}  (report: {result.run_dir / 'report'})")


def _is_preference_config(config: Path | None, set_: list[str] | None) -> bool:
    """A config with a ``preference:`` section (in the file or set with --set) is an offline
    preference-optimization run."""
    from rewardlab.config import load_yaml

    in_file = config is not None and "preference" in load_yaml(config)
    return in_file or any(item.split("=", 1)[0].strip().split(".")[0] == "preference" for item in set_ or [])


def _train_preference(config: Path | None, set_: list[str] | None, resume: Path | None) -> None:
    from rewardlab.config import PreferenceConfig, load_config
    from rewardlab.tracking.progress import ProgressView
    from rewardlab.trainers.preference import train_preference

    cfg = load_config(PreferenceConfig, config, set_)
    title = "+".join(loss.name.upper() for loss in cfg.preference.losses)
    run = train_preference
    if cfg.preference.online is not None:
        from rewardlab.trainers.preference_online import train_online_preference

        title, run = f"{cfg.preference.online.method.upper()} ({title})", train_online_preference
    with _interruptible(), ProgressView(title, err_console) as view:
        result = run(cfg, resume=resume, on_start=view.start, on_step=view.step)
    _print_skipped(result.skipped_rows)
    _print_eval("before", result.first_eval)
    _print_eval("after", result.last_eval)
    console.print(f"run folder: {result.run_dir}  ({result.steps} steps, {result.seconds:.0f} s)")


@app.command()
def sft(
    config: ConfigArg = None,
    set_: SetOption = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the SFT run in this folder from its last checkpoint.")
    ] = None,
) -> None:
    """Supervised fine-tuning on a task's demonstrations or a prompt/completion dataset."""
    from rewardlab.config import SFTConfig, load_config
    from rewardlab.tracking.progress import ProgressView
    from rewardlab.trainers.sft import train_sft

    _quiet_libraries()
    if resume is not None and config is None:
        from rewardlab.trainers.common import resume_config_file

        config = resume_config_file(resume, "rewardlab sft", "runs/sft-20261122-120000")
    cfg = load_config(SFTConfig, config, set_)
    with _interruptible(), ProgressView("SFT", err_console) as view:
        result = train_sft(cfg, resume=resume, on_start=view.start, on_step=view.step)
    _print_skipped(result.skipped_rows)
    _print_eval("before", result.first_eval)
    _print_eval("after", result.last_eval)
    console.print(f"model: {result.run_dir / 'final'}  ({result.steps} steps, {result.seconds:.0f} s)")


@app.command("eval")
def eval_(
    config: Annotated[
        Path | None,
        typer.Argument(help="A run config (YAML) or a run folder (evaluates its final model).", show_default=False),
    ] = None,
    set_: SetOption = None,
    model: Annotated[str | None, typer.Option(help="Model to evaluate (overrides model.name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a model on held-out prompts: greedy accuracy, mean reward, pass@k."""
    from rewardlab.config import RunConfig, load_config
    from rewardlab.trainers.common import run_config_of_folder
    from rewardlab.trainers.online import evaluate_config

    _quiet_libraries()
    overrides = list(set_ or [])
    if model is not None:
        overrides.append(f"model.name={model}")
    if config is not None and config.is_dir():
        cfg = run_config_of_folder(config, overrides)
    else:
        cfg = load_config(RunConfig, config, overrides)
    metrics = evaluate_config(cfg)
    if as_json:
        console.print_json(json.dumps(metrics))
    else:
        _print_eval(cfg.model.name, metrics)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every registered component, by axis, with its paper; and the recipes."""
    from rewardlab.catalogue import catalogue

    entries = catalogue()
    if as_json:
        console.print_json(json.dumps(entries))
        return
    for axis, items in entries["axes"].items():
        table = Table(title=f"{axis}", title_justify="left", show_lines=False)
        for column in ("name", "paper", "arxiv", "params"):
            table.add_column(column, overflow="fold")
        for item in items:
            params = ", ".join(f"{k}={v}" for k, v in item["params"].items())
            table.add_row(item["name"], item["paper"], item["arxiv"] or "", params)
        console.print(table)
    table = Table(title="recipes", title_justify="left")
    for column in ("name", "advantage", "policy_loss", "kl", "aggregation", "extras"):
        table.add_column(column, overflow="fold")
    for name, recipe in entries["recipes"].items():
        axes = [str(recipe[a]["name"]) for a in ("advantage", "policy_loss", "kl", "aggregation")]
        table.add_row(name, *axes, _recipe_extras(recipe))
    console.print(table)
    table = Table(title="rewards", title_justify="left")
    table.add_column("name")
    table.add_column("what it scores", overflow="fold")
    for item in entries["rewards"]:
        table.add_row(item["name"], item["doc"])
    console.print(table)
    table = Table(title="environments (agent.env)", title_justify="left")
    table.add_column("name")
    table.add_column("what it is", overflow="fold")
    for item in entries["environments"]:
        table.add_row(item["name"], item["doc"])
    console.print(table)


def _recipe_extras(recipe: dict[str, object]) -> str:
    """A recipe's choices beyond the four core axes, e.g. ``dynamic_sampling, overlong_penalty``."""
    found = [c["name"] for c in recipe.get("reward_transforms", [])]  # type: ignore[union-attr]
    found += [recipe[k]["name"] for k in ("batch_filter", "correction") if recipe.get(k)]  # type: ignore[index]
    kl = recipe["kl"]
    if kl.get("placement") == "reward":  # type: ignore[union-attr]
        found.append("KL in reward")
    return ", ".join(found)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """PNG plots of reward, accuracy, KL, entropy, completion length and loss over steps."""
    from rewardlab.tracking import write_report

    if not run_dir.is_dir():
        raise RewardlabError(f"{run_dir}: no such run folder")
    for path in write_report(run_dir):
        console.print(str(path))


@app.command()
def quickstart(
    seed: Annotated[int, typer.Option(help="Seed for the model, data and sampling.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where the two runs go [default: runs/quickstart-<time>].")
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="Write {accuracy_before, accuracy_after, seconds, run_dir} here.")
    ] = None,
) -> None:
    """Warm-start the built-in tiny model on arithmetic with SFT, then GRPO; before vs after."""
    from rewardlab.quickstart import run_quickstart

    _quiet_libraries()
    summary = run_quickstart(seed=seed, root=run_dir, console=console, err_console=err_console)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")


@app.command()
def bon(config: ConfigArg = None, set_: SetOption = None) -> None:
    """Test-time selection: best-of-n, majority vote, Best-of-Majority and conservative
    ensemble best-of-n on held-out prompts; gold reward vs n next to the analytic KL."""
    from rewardlab.bon import bon_command

    _quiet_libraries()
    bon_command(config, set_)


# `rewardlab serve MODEL` and `rewardlab judge probe`: LLM judges, in their own module (light
# to import: torch loads only when `serve` runs).
from rewardlab.judges.cli import judge_app, serve_command

app.command("serve")(serve_command)
app.add_typer(judge_app, name="judge")

# `rewardlab rm ...`: the reward-model commands, in their own module.
from rewardlab.reward_models.cli import rm_app

app.add_typer(rm_app, name="rm")

# `rewardlab experiment NAME`: reproductions of papers' claims (torch loads only when one runs).
from rewardlab.experiments.cli import experiment_command

app.command("experiment")(experiment_command)


def _print_skipped(count: int) -> None:
    if count:
        err_console.print(
            f"[yellow]skipped {count} bad dataset rows[/yellow] (data.skip_bad_rows is on); "
            "turn it off to see the first problem"
        )


def _print_eval(label: str, metrics: dict[str, Any]) -> None:
    if not metrics:
        return
    shown = "  ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in sorted(metrics.items()))
    console.print(f"[bold]{label}[/bold]: {shown}")


@contextmanager
def _interruptible() -> Iterator[None]:
    """Typer turns a KeyboardInterrupt into a bare exit 130; say what it means for the run.
    (A first SIGINT / SIGTERM stops a training run cleanly with a checkpoint; this is the
    second one, which stops it at once.)"""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("interrupted; resume the run with --resume RUN_DIR")
        raise typer.Exit(130) from None


def main() -> None:
    """Entry point: user errors become one message, not a traceback."""
    try:
        app()
    except RewardlabError as e:
        # The message is plain text: brackets in it (rewardlab[tracking]) are not markup.
        err_console.print(Text("error: ", style="bold red") + Text(str(e)), highlight=False)
        sys.exit(2)
    except StopRequested as e:
        err_console.print(str(e))
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted; resume the run with --resume RUN_DIR")
        sys.exit(130)


if __name__ == "__main__":
    main()
