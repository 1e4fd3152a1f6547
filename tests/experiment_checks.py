"""The checks every reproduction's fast mode passes (imported by the test_experiments* files)."""

from __future__ import annotations

from pathlib import Path

from rewardlab.experiments import ExperimentResult, get
from rewardlab.experiments.report import MAX_PNG_KB


def run_fast(name: str, out: Path, seed: int = 0) -> ExperimentResult:
    """Run ``name --fast`` into ``out``: it writes its table (with a link to its PNG) and a PNG
    under the size limit, and every row states the paper's claim."""
    result = get(name).run(fast=True, seed=seed, out=out)
    md, png = out / "result.md", out / f"{name}.png"
    assert md in result.files and png in result.files
    text = md.read_text()
    assert "| metric | ours | paper's claim | agree | note |" in text
    assert f"]({name}.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < MAX_PNG_KB * 1024
    assert result.rows and all(r.agree in (True, False, None) for r in result.rows)
    assert all(r.claim for r in result.rows)
    return result
