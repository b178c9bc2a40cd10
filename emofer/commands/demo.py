"""``emofer demo``: the quickstart on synthetic faces (face-prior pretraining, then the ablation grid)."""

from __future__ import annotations

import argparse

from emofer.commands.grid import add_run_options

NAME = "demo"
HELP = (
    "the quickstart: pretrain a tiny base MLLM and a tiny face prior on SynthFER, "
    "then fine-tune and compare EMO-LLaMA variants"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    parser.add_argument("--grid", help="another grid file to run instead of the quickstart")
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED",
        help="run every variant once per seed, print mean ± std and write OUT/seeds.json (the record a "
        "one-seed demo prints beside its table when it lies next to the grid as <grid>.seeds.json)",
    )
    add_run_options(parser, "variants", "the grid's jobs:")


def run(args: argparse.Namespace) -> int:
    from emofer.commands._console import console, print_run_result, results_table, summary_table
    from emofer.demo import QUICKSTART, SEED_SPREAD, measured_spread, run_demo
    from emofer.report import rows, summary_rows

    con = console()
    con.rule("[bold]emofer quickstart")
    con.print(
        "stage 0: a tiny base MLLM (LLaMA-VID's stand-in) learns to answer questions about SynthFER faces that are "
        "not the expression (gender, age, ethnicity, head turn and tilt)\n"
        "stage 1: a tiny FaceXFormer learns SynthFER's landmarks and age/gender/race\n"
        "         (stages 0 and 1 run at once and are cached after the first demo)\n"
        "stage 2: EMO-LLaMA and its ablations are instruction-tuned (from scratch, and once from the base: "
        "from-base) and tested once on SynthFER's test split"
    )

    def announce(spec, index, total):
        con.rule(f"[bold]variant {index + 1}/{total}: {spec.id}")

    def finished(result, index, total):
        print_run_result(con, result, "variant")

    result = run_demo(
        args.out,
        args.grid or QUICKSTART,
        retry_failed=args.retry_failed,
        on_run_start=announce,
        on_run_end=finished,
        jobs=args.jobs,
        seeds=args.seeds,
    )
    grid = args.grid or QUICKSTART
    con.print(results_table(rows(result.results), title="quickstart on SynthFER (test split)"))
    summary = summary_rows(result.results)
    spread = None if summary else measured_spread(grid)
    if summary:
        con.print(summary_table(summary, title="mean ± std over seeds"))
        if args.seeds:
            con.print(f"seed record: {result.out / 'seeds.json'}")
    elif spread:
        seeds = ", ".join(str(s) for s in spread["seeds"])
        con.print(summary_table(spread["summary"], keys=("uar", "war"), title=(
            f"the spread to read it against: this grid over seeds {seeds} "
            f"(measured {spread['date']}, commit {spread['commit']}, {spread['machine']})")))
        con.print(
            "One seed per variant above: a difference between variants smaller than the std beside it "
            "ranks nothing. The same seed repeats its numbers on one machine, not across machines "
            "(docs/quickstart.md)."
        )
        if not spread["current"]:
            con.print("[yellow]the grid has changed since that spread was measured: it may not hold[/]")
    else:
        con.print(SEED_SPREAD)
    out = result.out
    con.print(
        f"finished in {result.seconds:.0f} s. Results: [bold]{out / 'results.csv'}[/], {out / 'results.md'}"
    )
    con.print(
        f"chart: {out / 'results.png'}; per variant (config, metrics, predictions, model): {out / 'runs'}/"
    )
    return 0 if all(r.status == "done" for r in result.results) else 1
