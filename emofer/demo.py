"""The quickstart: a face prior pretrained on SynthFER, then EMO-LLaMA's ablation grid on it.

``emofer demo`` (``make demo``) runs ``emofer/configs/grids/quickstart.yaml``:

1. stage 1 pretrains ``facexformer-tiny`` on SynthFER's landmarks and
   age/gender/race labels (the stand-in for the pretrained FaceXFormer; cached
   under ``$EMOFER_CACHE``, so later demos reuse it);
2. stage 2 trains and evaluates the grid's variants on SynthFER — the default
   ``emo-llama-tiny``, its ablations ``-no-fim`` and ``-no-agr``, the
   ``classifier-tiny`` baseline on images, and the default on videos — with
   the prior frozen and its features cached.

Everything lands in one folder: ``results.csv`` / ``results.md`` /
``results.png``, ``runs/<id>/`` per variant and ``demo.json`` (wall time).

Example:
    >>> result = run_demo("runs/quickstart")  # doctest: +SKIP
    >>> [(r.id, r.metrics["uar"]) for r in result.results]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emofer.config import PRESET_DIR, atomic_write_text
from emofer.grid import Grid, RunResult, RunSpec, run_grid

QUICKSTART = PRESET_DIR / "grids" / "quickstart.yaml"
"""The grid the demo runs."""

SEED_SPREAD = (
    "One seed per variant. Measured over 3 seeds of this grid (docs/quickstart.md): "
    "the UAR of one variant varies by a standard deviation of TBD; differences smaller "
    "than about twice that do not rank the variants."
)
"""Printed beside a one-seed results table: the seed spread measured with ``grid: {seed: [0, 1, 2]}``."""


@dataclass
class DemoResult:
    """What a demo produced: its folder, one result per run, and its wall time in seconds."""

    out: Path
    results: list[RunResult]
    seconds: float


def run_demo(
    out: str | os.PathLike[str] = "runs/quickstart",
    grid: str | os.PathLike[str] = QUICKSTART,
    retry_failed: bool = False,
    on_run_start: Callable[[RunSpec, int, int], None] | None = None,
    jobs: int | None = None,
    on_run_end: Callable[[RunResult, int, int], None] | None = None,
) -> DemoResult:
    """Runs the quickstart grid (face-prior pretraining included) into ``out``.

    Args:
        out: the output folder.
        grid: the grid file (default: the shipped quickstart).
        retry_failed: rerun variants that failed in an earlier demo in ``out``.
        on_run_start: called with ``(run, index, total)`` before each variant that runs.
        jobs: variants that train at once (default: the grid's ``jobs:``).
        on_run_end: called with ``(result, index, total)`` after each variant that ran.
    """
    out = Path(out)
    start = time.perf_counter()
    results = run_grid(
        Grid.load(grid),
        out,
        retry_failed=retry_failed,
        on_run_start=on_run_start,
        jobs=jobs,
        on_run_end=on_run_end,
    )
    seconds = time.perf_counter() - start
    summary = {"seconds": seconds, "runs": {r.id: r.status for r in results}, "grid": str(grid)}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    return DemoResult(out, results, seconds)
