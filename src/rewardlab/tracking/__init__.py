"""Run tracking: per-step metric sinks (metrics.jsonl plus optional TensorBoard, wandb,
MLflow) and offline PNG reports built from metrics.jsonl."""

from rewardlab.tracking.report import GROUPS, MetricGroup, write_report
from rewardlab.tracking.sinks import (
    METRICS_FILENAME,
    SINK_NAMES,
    JsonlSink,
    MetricSink,
    MlflowSink,
    TensorBoardSink,
    WandbSink,
    check_sinks,
    close_all,
    make_sinks,
    read_metrics,
)

__all__ = [
    "GROUPS",
    "METRICS_FILENAME",
    "SINK_NAMES",
    "JsonlSink",
    "MetricGroup",
    "MetricSink",
    "MlflowSink",
    "TensorBoardSink",
    "WandbSink",
    "check_sinks",
    "close_all",
    "make_sinks",
    "read_metrics",
    "write_report",
]
