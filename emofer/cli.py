"""The ``emofer`` command.

Subcommands live in ``emofer/commands/``: every public module there defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and is
picked up here, so adding a subcommand never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import emofer
import emofer.commands


def _subcommand_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(emofer.commands.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"emofer.commands.{info.name}"))
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emofer",
        description="Facial-expression understanding with multimodal LLMs, composed from registered parts.",
    )
    parser.add_argument("--version", action="version", version=f"emofer {emofer.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _subcommand_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from emofer.commands._logging import configure

    configure(verbose=args.verbose, progress=not getattr(args, "no_progress", False))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        _print_error("interrupted", args.verbose)
        return 130
    except Exception as err:  # every refusal is one line; -v adds the traceback
        _print_error(error_line(err), args.verbose)
        return 2 if isinstance(err, usage_errors()) else 1


def usage_errors() -> tuple[type[Exception], ...]:
    """Refusals of what the command was asked — a config, argument, data set or model source
    (exit status 2); any other error (an unsafe file, a failure during a run) exits with 1."""
    from emofer.checkpoints.base import CheckpointError
    from emofer.data.errors import DataError

    return (emofer.ConfigError, emofer.UnknownComponentError, emofer.ComponentConfigError, DataError, CheckpointError)


def error_line(err: BaseException) -> str:
    """The one line the CLI prints for an error: its message on one line, prefixed by its type
    when that is not one of emofer's own (whose messages already say what went wrong)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in str(err):
        # re-raised from a DataLoader worker: the message is the worker's traceback; its last line is the error
        kind, _, message = lines[-1].partition(": ")
        lines = [message or kind]
    text = " ".join(lines) or repr(err)
    if type(err).__module__.split(".")[0] == "emofer":
        return text
    return f"{type(err).__name__}: {text}"


def _print_error(line: str, verbose: bool) -> None:
    from rich.console import Console
    from rich.markup import escape

    con = Console(stderr=True, soft_wrap=True)
    if verbose:
        con.print_exception()
    con.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
