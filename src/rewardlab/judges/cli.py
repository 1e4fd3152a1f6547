"""``rewardlab serve MODEL`` and ``rewardlab judge probe``.

Mounted on the main app by ``rewardlab.cli``; user mistakes raise ``RewardlabError``, which
the main entry point prints as one line (exit status 2). Self-contained (its own consoles),
like ``rewardlab.reward_models.cli``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rewardlab.errors import RewardlabError

console = Console()
err_console = Console(stderr=True)

judge_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLM judges: robustness probes of a judge behind an OpenAI-compatible endpoint.",
)


@judge_app.callback()
def _judge() -> None:
    """LLM judges: robustness probes of a judge behind an OpenAI-compatible endpoint."""


def serve_command(
    model: Annotated[
        str,
        typer.Argument(help="builtin:tiny, smollm2-135m, a model folder or a hub id.", show_default=False),
    ],
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless --allow-remote.")] = "127.0.0.1",
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host (the API has no authentication).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of builtin:tiny's weights.")] = 0,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
) -> None:
    """Serve MODEL through an OpenAI-compatible API (/v1/models, /v1/chat/completions)."""
    if not 0 <= port <= 65535:
        raise RewardlabError(f"--port: must be in [0, 65535], got {port}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from rewardlab.judges.server import serve

    server = serve(
        model, host=host, port=port, seed=seed, max_tokens_limit=max_tokens_limit,
        allow_remote=allow_remote,
    )
    console.print(f"serving {model} at {server.url} (Ctrl-C to stop)", highlight=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        server.shutdown()


@judge_app.command("probe")
def probe_command(
    endpoint: Annotated[
        str, typer.Option(help="Base URL of the judge's API, e.g. http://127.0.0.1:8000/v1.", show_default=False)
    ],
    model: Annotated[str, typer.Option(help="The judge model's name at the endpoint.", show_default=False)],
    rubric: Annotated[
        Path | None,
        typer.Option(help="Rubric template file ({prompt}, {completion}, {reference}); default: a reference check."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="JSONL/JSON rows with 'prompt' and the reference column; default: built-in questions."),
    ] = None,
    reference_column: Annotated[str, typer.Option(help="Column holding the reference answer.")] = "answer",
    min_score: Annotated[float, typer.Option(help="Lowest score of the rubric.")] = 0.0,
    max_score: Annotated[float, typer.Option(help="Highest score of the rubric.")] = 10.0,
    threshold: Annotated[
        float | None, typer.Option(help="Scores >= this count as 'judged correct' [default: mid-range].")
    ] = None,
    core_only: Annotated[
        bool, typer.Option(help="Only the four master keys of the digest (':', '.', two openers).")
    ] = False,
    api_key_env: Annotated[
        str | None, typer.Option(help="Name of the environment variable holding the API key.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 30.0,
    retries: Annotated[int, typer.Option(help="Retries of a failed request.")] = 2,
    max_workers: Annotated[int, typer.Option(help="Concurrent requests.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Longest judge reply, in tokens.")] = 256,
    max_fpr: Annotated[
        float | None, typer.Option(help="Exit with status 1 when the false-positive rate is above this.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Send content-free 'master key' answers (':', '.', 'Thought process:', ...) to a judge
    and report how often it accepts them (its false-positive rate)."""
    from rewardlab.judges.llm import DEFAULT_REFERENCE_RUBRIC, llm_judge
    from rewardlab.judges.probe import CORE_KEYS, DEFAULT_ROWS, probe_judge, read_probe_rows

    if rubric is not None:
        if not rubric.is_file():
            raise RewardlabError(f"--rubric: {rubric} is not a file")
        rubric_text = rubric.read_text(encoding="utf-8")
    else:
        rubric_text = DEFAULT_REFERENCE_RUBRIC
    if data is not None:
        rows = read_probe_rows(data, reference_column)
    else:
        rows = [{"prompt": r["prompt"], reference_column: r["answer"]} for r in DEFAULT_ROWS]
    try:
        judge = llm_judge(
            endpoint=endpoint,
            model=model,
            rubric=rubric_text,
            min_score=min_score,
            max_score=max_score,
            reference_column=reference_column,
            on_failure="none",  # a failed row is reported as failed, not as a score
            api_key_env=api_key_env,
            timeout=timeout,
            retries=retries,
            max_workers=max_workers,
            max_tokens=max_tokens,
        )
    except RewardlabError as err:
        raise RewardlabError(str(err).replace("reward 'llm_judge': arg ", "--")) from None
    cut = (min_score + max_score) / 2 if threshold is None else threshold
    keys = [k.text for k in CORE_KEYS] if core_only else None
    report = probe_judge(judge, rows, threshold=cut, keys=keys, reference_column=reference_column)
    if report.scored == 0:
        raise RewardlabError(
            f"judge probe: all {report.failed} probe responses failed to be judged (last: "
            f"{judge.last_error}); check the endpoint, the model name and that the rubric asks "
            "for a last line 'Score: <number>'"
        )
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        _print_report(report, model)
    if max_fpr is not None and report.false_positive_rate > max_fpr:
        raise typer.Exit(1)


def _print_report(report: object, model: str) -> None:
    from rewardlab.judges.probe import ProbeReport

    assert isinstance(report, ProbeReport)
    table = Table(title=f"master-key probes of {model} (score >= {report.threshold:g} = accepted)")
    for column in ("response", "accepted", "scored", "failed", "rate"):
        table.add_column(column, justify="left" if column == "response" else "right")
    for key, counts in report.per_key.items():
        rate = report.key_rate(key)
        table.add_row(
            repr(key),
            str(counts["accepted"]),
            str(counts["scored"]),
            str(counts["failed"]),
            "n/a" if math.isnan(rate) else f"{rate:.2f}",
        )
    console.print(table)
    console.print(
        f"false-positive rate: {report.false_positive_rate:.3f} "
        f"({report.accepted}/{report.scored} probe responses accepted; {report.failed} failed)",
        highlight=False,
    )
