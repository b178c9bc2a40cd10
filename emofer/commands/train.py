"""``emofer train -c CFG [key=value ...]``: train a config, export the model, evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a preset or config file, export the model and evaluate it on the test split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="preset name or YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
    parser.add_argument("--out", help="run folder (default: <train.out_dir>/<name>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import emofer
    from emofer.commands._console import console, is_rank_zero, metrics_table
    from emofer.experiment import train

    cfg = emofer.load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(cfg.train.out_dir) / cfg.name
    metrics = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    if is_rank_zero():
        con = console()
        con.print(metrics_table(metrics, title=f"{cfg.name} — test ({metrics['eval_mode']})"))
        con.print(f"run folder: [bold]{out}[/] (model in {out / 'model'})")
    return 0
