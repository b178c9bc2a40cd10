"""``emofer eval --ckpt DIR [-c CFG]``: evaluate a trained model on a config's test data."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "eval"
HELP = "evaluate a trained model (model folder, run folder or .ckpt) on a config's test split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a save_pretrained folder, a run folder or a .ckpt")
    parser.add_argument("-c", "--config", help="preset or YAML (default: the run's config.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. eval.mode=generate")
    parser.add_argument("--out", help="where metrics and predictions go (default: <ckpt folder>/eval)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_config(ckpt: Path) -> Path:
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.exists() and "train:" in candidate.read_text():
            return candidate
    import emofer

    raise emofer.ConfigError(f"found no run config next to {ckpt}; pass -c CFG")


def run(args: argparse.Namespace) -> int:
    import emofer
    from emofer.commands._console import console, extras_lines, is_rank_zero, metrics_table
    from emofer.evaluation import evaluate

    ckpt = Path(args.ckpt)
    if not ckpt.exists():
        raise emofer.ConfigError(f"--ckpt {ckpt} does not exist")
    cfg = emofer.load_config(args.config or _run_config(ckpt), args.overrides)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "eval"
    metrics = evaluate(cfg, ckpt, out, progress=not args.no_progress)
    if is_rank_zero():
        con = console()
        con.print(metrics_table(metrics, title=f"{cfg.name} — test ({metrics['eval_mode']})"))
        for line in extras_lines(out):
            con.print(line, markup=False, highlight=False, soft_wrap=True)
        con.print(f"metrics and predictions: [bold]{out}[/]")
    return 0
