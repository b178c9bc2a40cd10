"""``emofer config PRESET [key=value ...]``: print a preset's (or file's) resolved config as YAML."""

from __future__ import annotations

import argparse

NAME = "config"
HELP = "print the resolved config of a preset or config file (after extends: and overrides) as YAML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="preset name or YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    import emofer
    from emofer.config import to_yaml

    print(to_yaml(emofer.load_config(args.config, args.overrides)), end="")
    return 0
