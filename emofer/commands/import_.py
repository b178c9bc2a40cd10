"""``emofer import PATH [--vision DIR] [-c PRESET] --out DIR``: another project's checkpoint as an emofer model."""

from __future__ import annotations

import argparse

NAME = "import"
HELP = "import a LLaVA / LLaMA-VID checkpoint as an emofer model folder (see docs/checkpoints.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the checkpoint folder (or file)")
    parser.add_argument("--out", required=True, help="the emofer model folder to write")
    parser.add_argument("--vision", help="the vision tower, for formats that keep it apart (LLaVA-1.5's CLIP)")
    parser.add_argument(
        "-c", "--config", help="a preset or YAML whose other parts are kept (e.g. emo-llama-7b); default: none"
    )
    parser.add_argument("overrides", nargs="*", help="dotlist overrides of that config, e.g. model.llm.dtype=bfloat16")
    parser.add_argument("--format", help="the checkpoint format (default: detected; `emofer list checkpoint_formats`)")
    parser.add_argument(
        "--copy-all",
        action="store_true",
        help="copy every weight into the folder (default: only what differs from the checkpoint, which is re-read)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import emofer
    from emofer.checkpoints import CheckpointError
    from emofer.commands._console import console

    con = console()
    if args.overrides and not args.config:
        raise emofer.ConfigError("overrides need a config to apply to: pass -c PRESET")
    cfg = emofer.load_config(args.config, args.overrides) if args.config else None
    try:
        model = emofer.from_checkpoint(args.path, vision=args.vision, cfg=cfg, format=args.format)
        model.save_pretrained(args.out, include_pretrained=args.copy_all)
    except CheckpointError as err:
        con.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
        return 2
    report = model.import_report
    source = model.checkpoint_source
    out = Path(args.out)
    written = (out / "model.safetensors").stat().st_size
    con.print(f"imported [bold]{args.path}[/] as a [bold]{source.format}[/] checkpoint")
    con.print(f"  filled {len(report.state)} tensors; dropped {len(report.dropped)}:")
    reasons: dict[str, int] = {}
    for reason in report.dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        con.print(f"    {count:5d}  {reason}", highlight=False)
    con.print("  kept at initialisation: " + (", ".join(report.kept) if report.kept else "nothing"), highlight=False)
    if report.adapters:
        con.print(f"  LoRA adapters: {len(report.adapters)} tensors, fresh", highlight=False)
    if args.copy_all:
        con.print(f"wrote {out} ({written / 1e6:.1f} MB, every weight)")
    else:
        base = sum(f["size"] for f in source.files)
        con.print(
            f"wrote {out} ({written / 1e6:.1f} MB; the base weights, {base / 1e6:.1f} MB in "
            f"{len(source.files)} file(s), are re-read from {source.path}"
            + (f" and {source.vision}" if source.vision else "")
            + ")",
            highlight=False,
        )
    return 0
