"""``emofer grid GRID.yaml``: run an ablation grid (resumable)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
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
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the run ids, how their configs differ and what would run; build every run's model on the "
        "meta device; train nothing (exit 1 when a run does not build)",
    )
    parser.add_argument("--only", nargs="+", metavar="ID", help="run just these runs")
    parser.add_argument("--rerun", nargs="+", metavar="ID", default=[], help="run these runs again even if done")
    parser.add_argument("--force", action="store_true", help="run every run again, finished or not")


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
    if args.dry_run:
        return print_plan(con, grid, out, args)
    live = con.is_terminal

    def finished(result, index, total):
        if not live:
            print_run_result(con, result, "run")

    caught: list[int] = []
    try:
        with watching(con, grid, out, live), interrupts(caught):
            results = run_grid(
                grid,
                out,
                retry_failed=args.retry_failed,
                on_run_end=finished,
                jobs=args.jobs,
                launcher=args.launcher,
                wait=not args.no_wait,
                only=args.only,
                rerun=args.rerun,
                force=args.force,
            )
    except (KeyboardInterrupt, SystemExit):  # SystemExit: Lightning's answer to Ctrl-C in a run
        if not caught:
            raise
    if caught:
        return interrupted(con, grid, out, caught[0], sys.argv[1:])
    if args.no_wait:
        return print_status(con, grid, out, args.launcher)
    con.print(results_table(rows(results), title=f"grid {grid.name}"))
    con.print(f"results: [bold]{out / 'results.csv'}[/], {out / 'results.md'}, {out / 'results.png'}")
    summary = summary_rows(results)
    if summary:
        con.print(summary_table(summary, title=f"grid {grid.name}: mean ± std over seeds / folds"))
        con.print(f"over seeds / folds: [bold]{out / 'summary.csv'}[/], {out / 'summary.md'}, {out / 'summary.png'}")
    return 0 if all(r.status == "done" or (args.only and r.id not in args.only) for r in results) else 1


def print_plan(con, grid, out: Path, args: argparse.Namespace) -> int:
    """``--dry-run``: one line per run (id, what would happen, its differences), errors last; 1 when one fails."""
    from emofer.grid.plan import plan_grid

    rows = plan_grid(grid, out, args.launcher, args.only, args.rerun, args.force, args.retry_failed)
    con.print(f"grid {grid.name}: {len(rows)} run(s) into {out}", highlight=False)
    for row in rows:
        diff = ", ".join(f"{k}={json.dumps(v)}" for k, v in row["differences"].items())
        mark = "[red]does not build[/]" if row["error"] else "[green]builds[/]"
        con.print(f"  [bold]{row['run']}[/]  {row['action']}  {mark}", highlight=False)
        if diff:
            con.print(f"      {diff}", highlight=False, soft_wrap=True)
    bad = [row for row in rows if row["error"]]
    for row in bad:
        con.print(f"[red]run {row['run']} does not build:[/] {row['error']}", highlight=False, soft_wrap=True)
    return 1 if bad else 0


@contextlib.contextmanager
def interrupts(caught: list[int]):
    """SIGINT and SIGTERM raise KeyboardInterrupt once (a second signal is ignored while the grid stops
    its workers); the first signal's number is put into ``caught``."""

    def handler(signum, frame):
        if caught:
            return
        caught.append(signum)
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def interrupted(con, grid, out: Path, signum: int, argv: list[str]) -> int:
    """Prints the one line an interrupted grid ends with; returns 128 + the signal's number."""
    from emofer.grid.watch import grid_states

    states = grid_states(out, [spec.id for spec in grid.runs])
    done = [row["run"] for row in states if row["status"] == "done"]
    name = signal.Signals(signum).name
    command = " ".join(shlex.quote(a) for a in ["emofer", *argv])
    con.print(
        f"{name}: grid {grid.name} stopped with {len(done)} of {len(states)} runs done"
        f"{' (' + ', '.join(done) + ')' if done else ''}; resume with: {command}",
        highlight=False,
        soft_wrap=True,
    )
    return 128 + signum


class _Table:
    """The live table: re-read from the run folders whenever rich refreshes it."""

    def __init__(self, grid, out: Path) -> None:
        self.grid, self.out = grid, out

    def __rich__(self):
        from rich.table import Table

        from emofer.grid.watch import grid_states

        table = Table(title=f"grid {self.grid.name} ({self.out})")
        for head in ("run", "status", "step", "loss", "UAR"):
            table.add_column(head, overflow="fold")
        colour = {"done": "green", "failed": "red", "running": "cyan", "queued": "yellow"}
        for row in grid_states(self.out, [spec.id for spec in self.grid.runs]):
            style = colour.get(row["status"], "")
            step = "" if row["step"] is None else f"{row['step']}/{row['max_steps'] or '?'}"
            loss = "" if row["loss"] is None else f"{row['loss']:.4f}"
            uar = f"{row['uar']:.4f}" if isinstance(row["uar"], float) else ""
            status = f"[{style}]{row['status']}[/]" if style else row["status"]
            if row["error"]:
                status += ": " + str(row["error"]).splitlines()[-1][:60]
            table.add_row(row["run"], status, step, loss, uar)
        return table


@contextlib.contextmanager
def watching(con, grid, out: Path, live: bool):
    """While the grid runs: a live rich table on a terminal, else a line whenever a run changes state."""
    import os
    import threading

    from emofer.grid.watch import describe, grid_states

    if live:
        from rich.live import Live

        old = os.environ.get("EMOFER_PROGRESS")
        os.environ["EMOFER_PROGRESS"] = "lines"  # no progress bar of an in-process run under the table
        try:
            with Live(_Table(grid, out), console=con, refresh_per_second=1):
                yield
        finally:
            if old is None:
                os.environ.pop("EMOFER_PROGRESS", None)
            else:
                os.environ["EMOFER_PROGRESS"] = old
        return
    stop = threading.Event()
    ids = [spec.id for spec in grid.runs]
    seen = {row["run"]: row["status"] for row in grid_states(out, ids)}

    def follow():
        while not stop.wait(1.0):
            for row in grid_states(out, ids):
                if row["status"] != seen.get(row["run"]):
                    seen[row["run"]] = row["status"]
                    con.print(f"{row['run']}: {describe(row)}", highlight=False, soft_wrap=True)

    thread = threading.Thread(target=follow, name="grid-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
