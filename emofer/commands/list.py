"""``emofer list [KIND]``: the registered components and where each came from."""

from __future__ import annotations

import argparse

NAME = "list"
HELP = "list registered components (encoders, face_priors, fusions, llm_heads, presets, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help="one registry (plural name) or 'presets'; default: all")
    parser.add_argument("pattern", nargs="?", default="*", help="shell wildcard on names")


def all_registries() -> dict:
    import emofer

    regs = dict(emofer.REGISTRIES)
    try:  # the data registry arrives with emofer.data
        from emofer.data import DATASETS

        regs["datasets"] = DATASETS
    except ImportError:
        pass
    return regs


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import emofer

    console = Console()
    regs = all_registries()
    kind = args.kind
    if kind == "presets":
        table = Table(title="presets")
        table.add_column("name")
        for name in emofer.list_presets():
            if __import__("fnmatch").fnmatchcase(name, args.pattern):
                table.add_row(name)
        console.print(table)
        return 0
    if kind is not None and kind not in regs:
        aliases = {k.rstrip("s"): k for k in regs} | {k.replace("_", "-"): k for k in regs}
        if kind in aliases:
            kind = aliases[kind]
        else:
            console.print(f"[red]unknown kind {kind!r}[/]; choose from {', '.join(regs)} or presets")
            return 2
    table = Table(title="emofer components")
    for col in ("kind", "name", "description", "from"):
        table.add_column(col)
    for k, reg in regs.items():
        if kind is not None and k != kind:
            continue
        names = reg.names(args.pattern)
        if not names:
            table.add_row(k, "[dim](empty)[/]", "", "")
        for name in names:
            table.add_row(k, name, reg.describe(name), reg.source(name))
    console.print(table)
    return 0
