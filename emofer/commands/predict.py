"""``emofer predict PATH... --model DIR``: the expression in images and videos."""

from __future__ import annotations

import argparse
import json

NAME = "predict"
HELP = "predict the facial expression of images and videos with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image or video files")
    parser.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    parser.add_argument("--mode", choices=("score", "generate", "classifier"), help="default: the model's")
    parser.add_argument("--labels", help="comma-separated candidate labels (default: the model's classes)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled from each video")
    parser.add_argument("--top", type=int, default=3, help="scores shown per input")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input instead")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.table import Table

    import emofer
    from emofer.commands._console import console
    from emofer.experiment import load_trained

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise emofer.ConfigError(f"no such file(s): {', '.join(missing)}")
    model = load_trained(args.model)
    mode = args.mode or ("classifier" if model.cfg.llm.name == "classifier" else "score")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    preds = model.classify(list(args.paths), labels=labels, mode=mode, num_frames=args.frames)
    con = console()
    if args.json:
        for path, p in zip(args.paths, preds, strict=True):
            print(json.dumps({"path": path, "label": p.label, "scores": p.scores, "text": p.text}))
        return 0
    table = Table(title=f"predictions ({mode})")
    for col in ("input", "label", "scores", "text"):
        table.add_column(col)
    for path, p in zip(args.paths, preds, strict=True):
        best = sorted(p.scores.items(), key=lambda kv: -kv[1])[: args.top]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in best)
        table.add_row(path, p.label or "[red]invalid[/]", scores, p.text)
    con.print(table)
    return 0
