"""``emofer predict PATH... --model DIR``: the expression in images, videos and frame folders."""

from __future__ import annotations

import argparse
import glob
import json
import os

from emofer.config import EVAL_MODES

NAME = "predict"
HELP = "predict the facial expression of images, videos and frame folders with a trained model"

CHUNK = 64
"""Inputs decoded and classified at once (results print as each chunk finishes)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="image or video files, frame folders (a clip), or quoted globs such as 'photos/*.jpg'",
    )
    parser.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    parser.add_argument("--mode", choices=EVAL_MODES, help="default: the model's")
    parser.add_argument("--labels", help="comma-separated candidate labels (default: the model's classes)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled from each video or frame folder")
    parser.add_argument("--each", action="store_true", help="a folder is a batch of inputs, not one frame folder")
    parser.add_argument(
        "--no-face-crop", action="store_true",
        help="do not crop the detected face out of photos larger than the model's input",
    )
    parser.add_argument(
        "--top", type=int, help="scores shown per input, best first (0: all; default 3 in the table, all in JSON)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per input instead")


def expand(paths: list[str], each: bool = False) -> list[str]:
    """The inputs named on the command line: globs expanded (sorted), folders kept as frame folders
    unless ``each`` (then every image or video inside is an input)."""
    from emofer.config import ConfigError
    from emofer.data.media import IMAGE_EXTENSIONS, is_video_file

    out: list[str] = []
    missing = []
    for path in paths:
        matches = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        if not matches or not all(os.path.exists(m) for m in matches):
            missing.append(path)
            continue
        for match in matches:
            if each and os.path.isdir(match):
                inside = sorted(os.path.join(match, f) for f in os.listdir(match))
                out += [f for f in inside if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS or is_video_file(f)]
            else:
                out.append(match)
    if missing:
        raise ConfigError(f"no such file(s) or no match for: {', '.join(missing)}")
    if not out:
        raise ConfigError(f"no images or videos in {', '.join(paths)}")
    return out


def top_scores(scores: dict[str, float], k: int) -> dict[str, float]:
    """The ``k`` best scores, best first (all when ``k`` is 0)."""
    best = sorted(scores.items(), key=lambda kv: -kv[1])
    return dict(best[:k] if k > 0 else best)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    import emofer
    from emofer.commands._console import console
    from emofer.experiment import load_trained

    if args.frames < 1:
        raise emofer.ConfigError(f"--frames must be at least 1, got {args.frames}")
    if args.top is not None and args.top < 0:
        raise emofer.ConfigError(f"--top must be 0 (all) or more, got {args.top}")
    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
        if not labels:
            raise emofer.ConfigError(f"--labels names no label: {args.labels!r}")
    paths = expand(args.paths, args.each)
    model = load_trained(args.model)
    mode = args.mode or ("classifier" if model.cfg.llm.name == "classifier" else "score")
    table = Table(title=f"predictions ({mode})")
    for col in ("input", "label", "scores", "text"):
        table.add_column(col)
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        preds = model.classify(
            chunk, labels=labels, mode=mode, num_frames=args.frames, face_crop=False if args.no_face_crop else None
        )
        for path, p in zip(chunk, preds, strict=True):
            best = top_scores(p.scores, args.top if args.top is not None else (0 if args.json else 3))
            if args.json:
                print(json.dumps({"path": path, "label": p.label, "scores": best, "text": p.text}), flush=True)
            else:
                scores = ", ".join(f"{k} {v:.2f}" for k, v in best.items())
                table.add_row(path, p.label or "[red]invalid[/]", scores, p.text)
    if not args.json:
        console().print(table)
    return 0
