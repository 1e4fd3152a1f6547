"""PNG plots of a run's metrics.jsonl, for looking at a run without any tracking service.

Uses matplotlib's object API with the Agg canvas (never pyplot), so no display is needed
and no global backend state is changed in the caller's process.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewardlab.errors import RewardlabError, writing
from rewardlab.tracking.sinks import METRICS_FILENAME, read_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_DIRNAME = "report"
OVERVIEW_NAME = "overview"


def _named(name: str) -> Callable[[str], bool]:
    """Matches `name` itself and its sub-keys (`loss`, `loss/policy`)."""
    return lambda key: key == name or key.startswith(name + "/")


@dataclass(frozen=True)
class MetricGroup:
    """One figure: a file stem, a title, a y label, and which metric keys belong to it."""

    name: str
    title: str
    ylabel: str
    matches: Callable[[str], bool]


# Order matters: a key goes to the first group that matches it.
GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup("reward", "Reward", "reward", lambda key: key.startswith("reward")),
    MetricGroup("accuracy", "Evaluation", "score", lambda key: key.startswith("eval/")),
    MetricGroup("kl", "KL to reference", "KL", _named("kl")),
    MetricGroup("entropy", "Policy entropy", "nats / token", _named("entropy")),
    MetricGroup("completion_length", "Completion length", "tokens", _named("completion_length")),
    MetricGroup("loss", "Loss", "loss", _named("loss")),
)

# step -> value for one metric; only the steps where it was logged (eval is sparse).
Series = dict[int, float]


def _is_plottable(value: Any) -> bool:
    """Real numbers only: bools and strings in a record are not curves."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _collect_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """Per-metric series; a later record for the same step wins (e.g. eval logged separately
    after the train metrics of that step)."""
    series: dict[str, Series] = {}
    for record in records:
        step = record["step"]
        for key, value in record.items():
            if key != "step" and _is_plottable(value):
                series.setdefault(key, {})[step] = float(value)
    return series


def _group_series(series: dict[str, Series]) -> list[tuple[MetricGroup, dict[str, Series]]]:
    """Groups that have at least one key, in GROUPS order, each with its keys sorted."""
    grouped: dict[str, dict[str, Series]] = {}
    for key in sorted(series):
        group = next((g for g in GROUPS if g.matches(key)), None)
        if group is not None:
            grouped.setdefault(group.name, {})[key] = series[key]
    return [(g, grouped[g.name]) for g in GROUPS if g.name in grouped]


def _plot_group(ax: Axes, group: MetricGroup, series: dict[str, Series]) -> None:
    """Draw one group's curves; sparse series get markers so single points stay visible."""
    longest = max(len(s) for s in series.values())
    for key, points in series.items():
        steps = sorted(points)
        values = [points[s] for s in steps]
        sparse = len(points) < longest or len(points) <= 20
        ax.plot(steps, values, label=key, marker="o" if sparse else None, markersize=3)
    ax.set_title(group.title)
    ax.set_xlabel("step")
    ax.set_ylabel(group.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _new_figure(width: float, height: float) -> Figure:
    """A Figure bound to the Agg canvas, independent of pyplot and any display."""
    # Imported here so importing rewardlab.tracking (done by every trainer) stays cheap.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_atomic(figure: Figure, path: Path) -> None:
    """Write the PNG under a temp name and rename it, so a viewer never sees half a file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        figure.savefig(tmp_name, format="png")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _write_group(out_dir: Path, group: MetricGroup, series: dict[str, Series]) -> Path:
    figure = _new_figure(7.0, 4.0)
    _plot_group(figure.add_subplot(), group, series)
    path = out_dir / f"{group.name}.png"
    _save_atomic(figure, path)
    return path


def _write_overview(out_dir: Path, groups: list[tuple[MetricGroup, dict[str, Series]]]) -> Path:
    ncols = 1 if len(groups) == 1 else 2
    nrows = math.ceil(len(groups) / ncols)
    figure = _new_figure(6.0 * ncols, 3.5 * nrows)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (group, series) in zip(axes, groups, strict=False):
        _plot_group(ax, group, series)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)  # odd number of groups leaves one empty cell
    path = out_dir / f"{OVERVIEW_NAME}.png"
    _save_atomic(figure, path)
    return path


def write_report(run_dir: Path | str) -> list[Path]:
    """Plot `<run_dir>/metrics.jsonl` into `<run_dir>/report/*.png`; return the written paths.

    One PNG per metric group present (reward, accuracy, kl, entropy, completion_length,
    loss, in that order), then `overview.png` with every group as a subplot. Keys that fit
    no group are not plotted.
    """
    metrics_path = Path(run_dir) / METRICS_FILENAME
    records = read_metrics(metrics_path)
    if not records:
        raise RewardlabError(
            f"{metrics_path}: the run has logged no steps yet "
            f"({'file is empty' if metrics_path.exists() else 'file not found'}); "
            "train for at least one step, or check the run directory"
        )
    groups = _group_series(_collect_series(records))
    if not groups:
        raise RewardlabError(
            f"{metrics_path}: no plottable metrics (none of: "
            f"{', '.join(g.name for g in GROUPS)}) in {len(records)} logged steps"
        )
    out_dir = Path(run_dir) / REPORT_DIRNAME
    # The plots are made from metrics.jsonl alone, so a failed one costs nothing of the run.
    then = f"the run itself is complete; once there is room, draw the plots with: rewardlab report {run_dir}"
    with writing("the report", out_dir, then):
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [_write_group(out_dir, group, series) for group, series in groups]
        written.append(_write_overview(out_dir, groups))
    return written
