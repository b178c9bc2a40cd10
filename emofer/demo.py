"""The quickstart: EMO-LLaMA's recipe in miniature on SynthFER.

``emofer demo`` (``make demo``) runs ``emofer/configs/grids/quickstart.yaml``:

0. stage 0 pretrains the tiny base MLLM (the stand-in for LLaMA-VID) on
   questions about SynthFER faces that are not the expression
   (:mod:`emofer.base_model`);
1. stage 1 pretrains ``facexformer-tiny`` on SynthFER's landmarks and
   age/gender/race labels (the stand-in for the pretrained FaceXFormer); both
   stages train at once and are cached under ``$EMOFER_CACHE``, so later
   demos reuse them;
2. stage 2 instruction-tunes the default ``emo-llama-tiny`` and its
   ablations ``no-fim`` and ``no-agr`` (from scratch: in miniature the base
   slows them down, docs/quickstart.md), ``from-base`` (the default started
   from the stage-0 base, as EMO-LLaMA starts from LLaMA-VID), the
   ``classifier-tiny`` baseline and the default on videos, with the prior
   frozen and its features cached, and tests each once.

Everything lands in one folder: ``results.csv`` / ``results.md`` /
``results.png``, ``runs/<id>/`` per variant and ``demo.json`` (wall time).

A one-seed demo prints, beside its table, the spread the same grid showed
over several seeds: ``quickstart.seeds.json`` next to the grid, written by
``emofer demo --seeds 0 1 2`` (:func:`run_demo` with ``seeds``) and read by
:func:`measured_spread`, which says when the grid changed since.

Example:
    >>> result = run_demo("runs/quickstart")  # doctest: +SKIP
    >>> [(r.id, r.metrics["uar"]) for r in result.results]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from emofer.config import PRESET_DIR, atomic_write_text
from emofer.grid import Grid, RunResult, RunSpec, run_grid

QUICKSTART = PRESET_DIR / "grids" / "quickstart.yaml"
"""The grid the demo runs."""

SEED_SPREAD = (
    "One seed per variant, and no measured seed spread for this grid: differences between variants "
    "may be noise. Run `emofer demo --seeds 0 1 2` for mean ± std (three times the time)."
)
"""Printed beside a one-seed results table when the grid has no measured spread (``<grid>.seeds.json``)."""

SEEDS_SUFFIX = ".seeds.json"
"""The measured seed spread of a grid lives next to it: ``quickstart.yaml`` -> ``quickstart.seeds.json``."""


def grid_hash(grid: str | os.PathLike[str]) -> str:
    """A hash of what a grid file says (its parsed content: comments and layout do not count)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(Path(grid)), resolve=False)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def spread_file(grid: str | os.PathLike[str]) -> Path:
    """Where the measured seed spread of ``grid`` is kept."""
    grid = Path(grid)
    return grid.with_name(grid.stem + SEEDS_SUFFIX)


def measured_spread(grid: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The seed spread recorded for ``grid`` (``<grid>.seeds.json``), or None.

    The record (see :func:`run_demo` with ``seeds``) holds ``summary`` (rows of
    :func:`emofer.report.summary_rows`), ``seeds``, ``date``, ``commit``,
    ``machine``, ``seconds`` and ``grid_hash``; ``current`` is added: False
    when the grid file has changed since the spread was measured.
    """
    path = spread_file(grid)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    record["current"] = record.get("grid_hash") == grid_hash(grid)
    return record


def _commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None


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
    seeds: Sequence[int] | None = None,
    runner: Callable[..., dict[str, Any]] | None = None,
) -> DemoResult:
    """Runs the quickstart grid (face-prior pretraining included) into ``out``.

    Args:
        out: the output folder.
        grid: the grid file (default: the shipped quickstart).
        retry_failed: rerun variants that failed in an earlier demo in ``out``.
        on_run_start: called with ``(run, index, total)`` before each variant that runs.
        jobs: variants that train at once (default: the grid's ``jobs:``).
        on_run_end: called with ``(result, index, total)`` after each variant that ran.
        seeds: run every variant once per seed (the grid's ``grid:`` gains a ``seed`` axis) and
            write ``out/seeds.json``: the mean ± std per variant, in the form of
            ``<grid>.seeds.json`` (copy it there to have one-seed demos print it).
        runner: what trains a run (default: :func:`emofer.experiment.train`; a stand-in in tests).
    """
    from omegaconf import OmegaConf

    out = Path(out)
    start = time.perf_counter()
    parsed = Grid.load(grid)
    if seeds:  # the same grid with a seed axis (its relative paths still from its folder)
        raw = OmegaConf.to_container(OmegaConf.load(Path(grid)), resolve=True)
        raw["grid"] = {**(raw.get("grid") or {}), "seed": [int(s) for s in seeds]}
        parsed = Grid.load(raw, root=Path(grid).parent)
    results = run_grid(
        parsed,
        out,
        retry_failed=retry_failed,
        on_run_start=on_run_start,
        jobs=jobs,
        on_run_end=on_run_end,
        runner=runner,
    )
    seconds = time.perf_counter() - start
    summary = {"seconds": seconds, "runs": {r.id: r.status for r in results}, "grid": str(grid)}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    if seeds:
        from emofer.report import summary_rows

        record = {
            "grid": Path(grid).name,
            "grid_hash": grid_hash(grid),
            "seeds": [int(s) for s in seeds],
            "date": date.today().isoformat(),
            "commit": _commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "seconds": round(seconds),
            "summary": summary_rows(results),
        }
        atomic_write_text(out / "seeds.json", json.dumps(record, indent=2) + "\n")
    return DemoResult(out, results, seconds)
