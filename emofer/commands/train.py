"""``emofer train -c CFG [key=value ...]``: train a config, export the model, evaluate it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "train"
HELP = "train a preset or config file, export the model and evaluate it on the test split"

RUN_DIR_ENV = "EMOFER_RUN_DIR"
"""The run folder rank 0 chose, for the processes its multi-process strategy starts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="preset name or YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
    parser.add_argument(
        "--out", help="run folder (default: <train.out_dir>/<name>, or <name>-2, -3, ... when that exists)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what an existing --out folder holds")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import emofer
    from emofer.commands._console import console, is_rank_zero, metrics_table
    from emofer.experiment import train

    cfg = emofer.load_config(args.config, args.overrides)
    if is_rank_zero():
        out = run_folder(Path(cfg.train.out_dir), cfg.name, args.out, resume=args.resume, overwrite=args.overwrite)
        os.environ[RUN_DIR_ENV] = str(out)  # the processes a multi-process strategy starts inherit it
        console().print(f"run folder: [bold]{out}[/]")
    else:  # started by rank 0's strategy, which chose the folder (or by torchrun: then --out names it)
        chosen = os.environ.get(RUN_DIR_ENV) or args.out
        if not chosen:
            raise emofer.ConfigError("processes started by torchrun or SLURM need --out: every rank must write to one folder")
        out = Path(chosen)
    metrics = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    if is_rank_zero():
        con = console()
        con.print(metrics_table(metrics, title=f"{cfg.name} — test ({metrics['eval_mode']})"))
        con.print(f"run folder: [bold]{out}[/] (model in {out / 'model'})")
    return 0


def _used(folder: Path) -> bool:
    return folder.exists() and any(folder.iterdir())


def run_folder(out_dir: Path, name: str, out: str | None, resume: bool = False, overwrite: bool = False) -> Path:
    """Where a run writes: never into an earlier run's folder unless asked.

    ``--out`` given: that folder; if it holds an earlier run, an error unless
    ``resume`` (continue it) or ``overwrite`` (its contents are removed).
    No ``--out``: ``out_dir/name``, or the first free ``name-2``, ``name-3``, ...;
    with ``resume``, the latest of those that exists.
    """
    import shutil

    from emofer.config import ConfigError

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    if out is not None:
        folder = Path(out)
        if _used(folder) and not (resume or overwrite):
            raise ConfigError(
                f"run folder {folder} holds an earlier run: pass --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        return folder
    candidates = [out_dir / name] + [out_dir / f"{name}-{i}" for i in range(2, 10_000)]
    if resume:
        existing = [c for c in candidates[:1] if _used(c)]
        existing += sorted(
            (c for c in out_dir.glob(f"{name}-*") if c.name[len(name) + 1 :].isdigit() and _used(c)),
            key=lambda c: int(c.name[len(name) + 1 :]),
        )
        if not existing:
            raise ConfigError(f"nothing to resume: no run folder {out_dir / name}[-N] exists")
        return existing[-1]
    if overwrite:
        folder = candidates[0]
        if folder.exists():
            shutil.rmtree(folder)
        return folder
    return next(c for c in candidates if not _used(c))
