"""What every benchmark script shares: flags, timing, the JSON record format, the printed table."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Record:
    """One measured figure, comparable across runs and machines."""

    name: str
    value: float
    unit: str
    target: str | None = None
    meets_target: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a reduced run (< 1 minute on 2 CPU cores) for smoke checks")
    p.add_argument("--json", type=Path, default=None, help="write the records to this JSON file")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: steadier on a shared machine; 0 keeps torch's default)",
    )
    return p


def setup(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)


def machine() -> dict[str, Any]:
    import torch

    info = {
        "date": _dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }
    return info


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def alternate(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each function, measured alternately, ``rounds`` calls each.

    Odd rounds run the functions in reverse order (A B, B A, ...), so a slow
    drift in machine load biases none of them.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return samples


def time_alternating(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, measured alternately (noise hits all alike)."""
    return {k: statistics.median(v) for k, v in alternate(fns, rounds, warmup).items()}


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios ``num[i] / den[i]`` of two alternately measured series.

    Each pair ran back to back, under nearly the same load, so their ratio is
    steadier than the ratio of the two medians on a shared machine.
    """
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def report(title: str, records: list[Record], json_path: Path | None, extra: dict[str, Any] | None = None) -> None:
    """Prints the records as a table and writes them (with the machine) as JSON."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("name", "value", "unit", "target", "meets"):
        table.add_column(col)
    for r in records:
        meets = "" if r.meets_target is None else ("yes" if r.meets_target else "NO")
        table.add_row(r.name, f"{r.value:.4g}", r.unit, r.target or "", meets)
    console = Console()
    console.print(table)
    info = machine()
    console.print(f"machine: {info}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = [asdict(r) | {"benchmark": title, "machine": info} for r in records]
        if extra:
            payload.append({"name": "extra", "value": None, "unit": "", "target": None, "meets_target": None,
                            "benchmark": title, "detail": extra})
        tmp = json_path.with_suffix(json_path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(json_path)
        console.print(f"wrote {json_path}")
