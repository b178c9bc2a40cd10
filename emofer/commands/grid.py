"""``emofer grid GRID.yaml``: run an ablation grid (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "grid"
HELP = "run an ablation grid: every run in its own folder, results.csv/md and charts; resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid YAML file, or the name of a shipped grid (e.g. quickstart)")
    parser.add_argument("--out", help="output folder (default: runs/<grid name>)")
    add_run_options(parser, "runs", "the grid's jobs:, else 1")


def add_run_options(parser: argparse.ArgumentParser, what: str, default_jobs: str) -> None:
    """``--retry-failed`` and ``--jobs``, shared by ``emofer grid`` and ``emofer demo``."""
    parser.add_argument("--retry-failed", action="store_true", help=f"rerun {what} that failed before")
    parser.add_argument(
        "--jobs", type=int, help=f"{what} that execute at once, each in its own process (default: {default_jobs})"
    )
    parser.add_argument(
        "--launcher",
        choices=["local", "local-gpus", "slurm", "submitit-local"],
        help="where runs execute (default: the grid's launcher:, else local); see docs/grids.md",
    )
    parser.add_argument(
        "--status", action="store_true", help="print where every run stands (job ids, errors) and start nothing"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="slurm: submit the runs and return (run the grid again to collect)"
    )


def resolve_grid(name: str) -> Path:
    """A grid file path, or the shipped ``emofer/configs/grids/<name>.yaml``."""
    import emofer
    from emofer.config import PRESET_DIR

    path = Path(name)
    if path.exists():
        return path
    shipped = PRESET_DIR / "grids" / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in (PRESET_DIR / "grids").glob("*.yaml"))
    raise emofer.ConfigError(f"no grid file {name!r}; shipped grids: {', '.join(known) or '(none)'}")


def run(args: argparse.Namespace) -> int:
    from emofer.commands._console import console, print_run_result, results_table, summary_table
    from emofer.grid import Grid, run_grid
    from emofer.report import rows, summary_rows

    grid = Grid.load(resolve_grid(args.grid))
    out = Path(args.out) if args.out else Path("runs") / grid.name
    con = console()
    if args.status:
        return print_status(con, grid, out, args.launcher)

    def announce(spec, index, total):
        con.rule(f"[bold]run {index + 1}/{total}: {spec.id}")

    def finished(result, index, total):
        print_run_result(con, result, "run")

    results = run_grid(
        grid,
        out,
        retry_failed=args.retry_failed,
        on_run_start=announce,
        on_run_end=finished,
        jobs=args.jobs,
        launcher=args.launcher,
        wait=not args.no_wait,
    )
    if args.no_wait:
        return print_status(con, grid, out, args.launcher)
    con.print(results_table(rows(results), title=f"grid {grid.name}"))
    con.print(f"results: [bold]{out / 'results.csv'}[/], {out / 'results.md'}, {out / 'results.png'}")
    summary = summary_rows(results)
    if summary:
        con.print(summary_table(summary, title=f"grid {grid.name}: mean ± std over seeds / folds"))
        con.print(f"over seeds / folds: [bold]{out / 'summary.csv'}[/], {out / 'summary.md'}, {out / 'summary.png'}")
    return 0 if all(r.status == "done" for r in results) else 1


def print_status(con, grid, out: Path, launcher: str | None) -> int:
    """Prints the ``--status`` table; exit status 1 when a run failed or was interrupted."""
    from rich.table import Table

    from emofer.grid import grid_status

    rows = grid_status(grid, out, launcher)
    table = Table(title=f"grid {grid.name} ({out})")
    for head in ("run", "status", "job", "detail"):
        table.add_column(head, overflow="fold")
    colour = {"done": "green", "failed": "red", "interrupted": "red", "running": "cyan", "queued": "yellow"}
    for row in rows:
        style = colour.get(row["status"], "")
        status = f"[{style}]{row['status']}[/]" if style else row["status"]
        detail = row["detail"] if len(row["detail"]) <= 100 else row["detail"][:99] + "…"
        table.add_row(row["run"], status, str(row["job"]), detail)
    con.print(table)
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    con.print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 1 if counts.get("failed") or counts.get("interrupted") else 0
