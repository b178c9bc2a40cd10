"""``emofer suite SUITE --model DIR``: evaluate a trained model on every set of a suite, tabulated as papers print it."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "suite"
HELP = "evaluate a model on every data set (and fold) of a suite: suite.md/csv/png with published reference rows"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="a shipped suite (emofer list suites) or a suite YAML file")
    parser.add_argument("--model", required=True,
                        help="a model or run folder (one model for all sets), or a suite grid's folder (one per fold)")
    parser.add_argument("-c", "--config", help="preset or YAML for the evaluation (default: the model's run config)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. eval.mode=generate data.num_frames=8")
    parser.add_argument("--data-root", help="folder of the sets' default roots (default: $EMOFER_DATA, else ./data)")
    parser.add_argument("--root", action="append", default=[], metavar="SET=DIR", help="one set's folder (repeatable)")
    parser.add_argument("--sets", help="comma-separated set ids to run (default: all)")
    parser.add_argument("--out", help="output folder (default: <model>/suite-<name>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _config_of(model: Path) -> Path:
    """The run config next to a model or run folder, or a suite grid's first run's."""
    from emofer.commands.eval import _run_config

    runs = sorted((model / "runs").glob("*/config.yaml")) if (model / "runs").is_dir() else []
    return runs[0] if runs else _run_config(model)


def run(args: argparse.Namespace) -> int:
    import emofer
    from emofer.commands._console import console
    from emofer.suite import Suite, run_suite, write_suite

    model = Path(args.model)
    if not model.exists():
        raise emofer.ConfigError(f"--model {model} does not exist")
    suite = Suite.load(args.suite).select(args.sets.split(",") if args.sets else None)
    roots = {}
    for item in args.root:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise emofer.ConfigError(f"--root expects SET=DIR, got {item!r}")
        roots[key] = value
    cfg = emofer.load_config(args.config or _config_of(model), args.overrides)
    out = Path(args.out) if args.out else model / f"suite-{suite.name}"
    con = console()

    def done(s, fold, metrics):
        where = s.title + (f" fold {fold}" if fold is not None else "")
        con.print(f"[green]{where}[/]: UAR {metrics['uar']:.4f}, WAR {metrics['war']:.4f} ({metrics['num_samples']} samples)")

    rows = run_suite(suite, cfg, model, out, data_root=args.data_root, roots=roots,
                     progress=not args.no_progress, on_point=done)
    con.print(write_suite(rows, out, suite.name), markup=False, highlight=False, soft_wrap=True)
    con.print(f"table: [bold]{out / 'suite.md'}[/], {out / 'suite.csv'}, {out / 'suite.png'}")
    return 0
