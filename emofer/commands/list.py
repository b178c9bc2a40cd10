"""``emofer list [KIND]``: the registered components and where each came from, presets, grids, templates."""

from __future__ import annotations

import argparse
import fnmatch
import re

NAME = "list"
HELP = "list registered components (encoders, face_priors, fusions, llm_heads, datasets), presets, grids, suites, templates"

_ROLES = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """A docstring line without reStructuredText markup (``x``, :class:`x`, `x`)."""
    text = _ROLES.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "").replace("`", "")


def _short(text: str, width: int = 90) -> str:
    """The text cut to ``width`` characters."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind", nargs="?",
        help="one registry (plural name), 'presets', 'grids', 'suites' or 'templates'; default: all registries",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell wildcard on names")


def all_registries() -> dict:
    """The part registries, what parts are configured with (temporal steps, named LLMs), and data sets."""
    import emofer
    from emofer.fusion.temporal import TEMPORAL_STEPS
    from emofer.llm.loading import NAMED_LLMS

    regs = dict(emofer.REGISTRIES)
    regs |= {"temporal_steps": TEMPORAL_STEPS, "named_llms": NAMED_LLMS}
    from emofer.data import DATASETS

    regs["datasets"] = DATASETS
    regs["checkpoint_formats"] = emofer.CHECKPOINT_FORMATS
    return regs


def _listing(kind: str, pattern: str) -> list[tuple[str, str, str]] | None:
    """Rows (name, description, detail) of the non-registry kinds, or None for another kind."""
    from emofer.config import PRESET_DIR, list_presets, preset_info

    if kind == "presets":
        rows = []
        for name in list_presets():
            info = preset_info(name)
            rows.append((name, _short(info["description"]), info["extends"]))
        return [r for r in rows if fnmatch.fnmatchcase(r[0], pattern)]
    if kind == "grids":
        from omegaconf import OmegaConf

        rows = []
        for path in sorted((PRESET_DIR / "grids").glob("*.yaml")):
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            runs = len(raw.get("runs") or []) if isinstance(raw, dict) else 0
            first = path.read_text(encoding="utf-8").splitlines()[:1]
            doc = first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""
            rows.append((path.stem, _short(doc), str(runs)))
        return [r for r in rows if fnmatch.fnmatchcase(r[0], pattern)]
    if kind == "suites":  # evaluation suites (emofer suite NAME --model DIR)
        from emofer.suite import Suite, list_suites

        rows = []
        for name in list_suites():
            suite = Suite.load(name)
            sets = ", ".join(s.id + (f" ({len(s.folds)} folds)" if s.folds else "") for s in suite.sets)
            rows.append((name, _short(suite.description), sets))
        return [r for r in rows if fnmatch.fnmatchcase(r[0], pattern)]
    if kind == "templates":
        from emofer.llm.prompts import PROMPT_TEMPLATES, get_template

        return [
            (name, " ".join(get_template(name).user.split()), "") for name in PROMPT_TEMPLATES.names(pattern)
        ]
    return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    regs = all_registries()
    kind = args.kind
    extra = ("presets", "grids", "suites", "templates")
    if kind in extra:
        table = Table(title=kind)
        table.add_column("name", no_wrap=True)
        table.add_column("prompt" if kind == "templates" else "description")
        if kind != "templates":
            table.add_column({"presets": "extends", "grids": "runs", "suites": "sets"}[kind])
        for row in _listing(kind, args.pattern) or []:
            table.add_row(*row[: len(table.columns)])
        console.print(table)
        return 0
    if kind is not None and kind not in regs:
        aliases = {k.rstrip("s"): k for k in regs} | {k.replace("_", "-"): k for k in regs}
        if kind in aliases:
            kind = aliases[kind]
        else:
            console.print(f"[red]unknown kind {kind!r}[/]; choose from {', '.join([*regs, *extra])}")
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
            table.add_row(k, name, plain(reg.describe(name)), reg.source(name))
    console.print(table)
    return 0
