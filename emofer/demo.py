"""The quickstart: EMO-LLaMA's recipe in miniature on SynthFER.

``emofer demo`` (``make demo``) runs ``emofer/configs/grids/quickstart.yaml``:

0. stage 0 pretrains the tiny base MLLM (the stand-in for LLaMA-VID) on
   questions about SynthFER faces that are not the expression
   (:mod:`emofer.base_model`);
1. stage 1 pretrains ``facexformer-tiny`` on SynthFER's landmarks and
   age/gender/race labels (the stand-in for the pretrained FaceXFormer); both
   stages train at once and are cached under ``$EMOFER_CACHE``, so later
   demos reuse them;
2. stage 2 fine-tunes the LLM variants from the base — the default
   ``emo-llama-tiny`` and its ablations ``-no-fim`` and ``-no-agr`` —, trains
   the ``classifier-tiny`` baseline and the default on videos, with the prior
   frozen and its features cached, and tests each once.

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
    "One seed per variant: runs of one recipe of this grid (trained from scratch, earlier "
    "sessions) differed by up to ~0.1 UAR, so differences of that size do not rank the "
    "variants (docs/quickstart.md). For mean ± std, run the grid with `grid: {seed: [0, 1, 2]}`."
)
"""Printed beside a one-seed results table: the run-to-run spread measured for this grid's recipe."""


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
