"""``emofer data``: export SynthFER to disk, draw its sample grid, count a data set's classes."""

from __future__ import annotations

import argparse

NAME = "data"
HELP = "data tools: synth (write SynthFER in a FER data set's layout), grid (sample picture), info (class counts)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    from emofer.data.synth.export import LAYOUTS

    synth = sub.add_parser("synth", help="write SynthFER to disk in a FER data set's layout")
    synth.add_argument("--out", required=True, help="target folder")
    synth.add_argument("--layout", choices=LAYOUTS, default="rafdb")
    synth.add_argument("--folds", type=int, default=1, help="dfew, mafw: cross-validation folds to write (1-5)")
    synth.add_argument("--train-size", type=int, default=7000)
    synth.add_argument("--test-size", type=int, default=1400)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--num-frames", type=int, default=16, help="frames per clip (dfew, ferv39k, mafw)")
    synth.add_argument("--difficulty", type=float, default=0.5)
    synth.add_argument("--offset", action="store_true", help="let clips relax after the apex (video layouts)")
    grid = sub.add_parser("grid", help="save a PNG with SynthFER samples, one row per class")
    grid.add_argument("--out", required=True, help="PNG path")
    grid.add_argument("--per-class", type=int, default=8)
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--difficulty", type=float, default=0.5)
    grid.add_argument("--image-size", type=int, default=64)
    info = sub.add_parser("info", help="build a data set and print its size and class counts")
    info.add_argument("name", help="registered data set (see `emofer list datasets`)")
    info.add_argument("options", nargs="*", metavar="KEY=VALUE", help="builder arguments, e.g. root=/data split=test")


def _parse_options(options: list[str]) -> dict:
    from emofer.commands._args import key_values

    return key_values(options, "data info")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.data_command == "synth":
        return _synth(args, console)
    if args.data_command == "grid":
        from emofer.data.synth.grid import save_grid

        path = save_grid(args.out, args.per_class, seed=args.seed, image_size=args.image_size,
                         difficulty=args.difficulty)
        console.print(f"wrote {path}")
        return 0
    return _info(args, console)


def _synth(args: argparse.Namespace, console) -> int:
    from rich.progress import Progress

    from emofer.config import ConfigError

    for flag in ("train_size", "test_size"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    for flag in ("image_size", "num_frames"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    from emofer.data.synth.export import export

    with Progress(console=console, transient=True) as bar:
        total = args.train_size + args.test_size * (2 if args.layout == "ferplus" else 1)
        task = bar.add_task(f"SynthFER -> {args.layout}", total=total)
        root = export(
            args.out, args.layout, args.train_size, args.test_size, seed=args.seed, image_size=args.image_size,
            num_frames=args.num_frames, difficulty=args.difficulty, offset=args.offset,
            progress=lambda done, total: bar.update(task, completed=done), folds=args.folds,
        )
    console.print(f"wrote {args.train_size} train + {args.test_size} test samples in the {args.layout} layout to {root}")
    return 0


def _info(args: argparse.Namespace, console) -> int:
    from rich.table import Table

    from emofer.data import DATASETS

    ds = DATASETS.build({"name": args.name, **_parse_options(args.options)})
    table = Table(title=f"{args.name}: {len(ds)} samples")
    table.add_column("index")
    table.add_column("class")
    table.add_column("samples", justify="right")
    labels = ds.labels() if hasattr(ds, "labels") else [ds[i]["label"] for i in range(len(ds))]
    for i, name in enumerate(ds.classes):
        table.add_row(str(i), name, str(sum(1 for label in labels if label == i)))
    console.print(table)
    return 0
