"""What the run commands show: rich tables of metrics and grid results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from emofer.metrics import SCALARS

LABELS = {"uar": "UAR", "war": "WAR", "macro_f1": "macro F1", "invalid_rate": "invalid"}


def is_rank_zero() -> bool:
    """False in the extra processes a multi-process strategy starts (they re-run the command).

    Lightning's ``rank_zero_only.rank``: the global rank once a trainer has
    set it up, before that the rank the launcher or cluster gave the process
    (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``, ...).
    """
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    """The scalar metrics and per-class recall of one evaluation."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SCALARS:
        table.add_row(LABELS[key], f"{metrics[key]:.4f}")
    for name, value in (metrics.get("recall") or {}).items():
        table.add_row(f"recall {name}", "-" if value is None else f"{value:.4f}")
    table.add_row("samples", str(metrics.get("num_samples", "")))
    return table


def results_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """One row per grid run (the rows of ``results.csv``)."""
    table = Table(title=title)
    table.add_column("run")
    for key in SCALARS:
        table.add_column(LABELS[key], justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("status")
    for row in rows:
        cells = ["" if row.get(k) is None else f"{row[k]:.4f}" for k in SCALARS]
        seconds = "" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        status = row["status"] + (f": {row['error'][:60]}" if row.get("error") else "")
        table.add_row(row["run"], *cells, seconds, status)
    return table


def summary_table(summary: Sequence[Mapping[str, Any]], title: str, keys: Sequence[str] = SCALARS) -> Table:
    """One row per seed group: mean ± std over the seeds of ``keys`` (the rows of ``summary.csv``)."""
    table = Table(title=title)
    table.add_column("run")
    table.add_column("seeds / folds", justify="right")
    for key in keys:
        table.add_column(LABELS[key], justify="right", no_wrap=True)
    from emofer.report import mean_std

    for row in summary:
        cells = [mean_std(row, key) for key in keys]
        table.add_row(row["run"], f"{row['seeds']}/{row['runs']}", *cells)
    return table


def console() -> Console:
    return Console()


def print_run_result(con: Any, result: Any, word: str = "run") -> None:
    """One line when a run of a grid ends: its UAR/WAR and time, or its error."""
    if result.status == "done":
        uar, war = (result.metrics.get(k, float("nan")) for k in ("uar", "war"))
        con.print(
            f"[green]{word} {result.id} done[/] in {result.seconds:.0f} s: UAR {uar:.3f}, WAR {war:.3f}"
        )
    else:
        con.print(f"[red]{word} {result.id} failed[/]: {result.error}")


def extras_lines(out: Any) -> list[str]:
    """What an evaluation folder holds beyond the metrics: prompt variants (their Markdown) and calibration."""
    import json
    from pathlib import Path

    out, lines = Path(out), []
    if (out / "prompt_variants.md").exists():
        lines += ["prompt robustness (eval.prompt_variants):", (out / "prompt_variants.md").read_text()]
    if (out / "calibration.json").exists():
        cal = json.loads((out / "calibration.json").read_text())
        fitted = f" (fitted on {', '.join(cal['fitted_on'])})" if cal["fitted_on"] else ""
        lines.append(f"calibration, temperature {cal['temperature']:.4g}{fitted}:")
        for name, s in cal["sets"].items():
            lines.append(f"  {name}: ECE {s['ece']:.4f} (at T = 1: {s['ece_t1']:.4f}), diagram {out / s['diagram']}")
    return lines
