"""``emofer check-part KIND NAME [key=value ...]``: build a part into a tiny model and check it."""

from __future__ import annotations

import argparse

NAME = "check-part"
HELP = "check a registered part: it builds, its declared dims match its output, gradients reach it, and a tiny model learns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="encoders | face_priors | fusions | llm_heads")
    parser.add_argument("name", help="the registered name")
    parser.add_argument("kwargs", nargs="*", help="the part's arguments as key=value (YAML values)")
    parser.add_argument("--base", default="emo-llama-tiny", help="the preset around the part (default emo-llama-tiny)")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the learning check")
    parser.add_argument("--import", dest="imports", action="append", default=[], help="a module to import first")


def parse_kwargs(items: list[str]) -> dict:
    """``["dim=64", "act=gelu"]`` to ``{"dim": 64, "act": "gelu"}`` (values parsed as YAML)."""
    from emofer.commands._args import key_values

    return key_values(items, "part arguments")


def run(args: argparse.Namespace) -> int:
    import importlib

    from emofer.partcheck import check_part

    for module in args.imports:
        importlib.import_module(module)
    report = check_part(args.kind, args.name, parse_kwargs(args.kwargs), base=args.base, steps=args.steps)
    print(report)
    return 0 if report.ok else 1
