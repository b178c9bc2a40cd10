"""What every benchmark script shares: flags, timing, the JSON record format, the printed table."""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
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
    spread: list[float] | None = None
    """[first quartile, third quartile] of the per-round values whose median ``value`` is, if any."""


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

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info = {
        "load_average": [round(x, 2) for x in load],
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


def quartiles(values: list[float]) -> list[float]:
    """``[q1, q3]`` of ``values`` (both the value itself for one value)."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def ratio_record(name: str, num: list[float], den: list[float], target: float | None = None,
                 op: str = "<=", detail: dict[str, Any] | None = None) -> Record:
    """The median per-round ratio ``num/den`` with its quartiles over rounds, checked against ``target``."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    value = statistics.median(ratios)
    meets = None if target is None else (value <= target if op == "<=" else value >= target)
    return Record(name, value, "x", None if target is None else f"{op} {target}", meets,
                  {"ratios": ratios, **(detail or {})}, quartiles(ratios))


def commit() -> str:
    """The git commit of the emofer being measured (``-dirty`` with uncommitted changes to tracked files).

    Falls back to ``$EMOFER_COMMIT`` (set by ``gpu/run.sh`` from a file carried with a copied tree).
    """
    import emofer

    root = Path(emofer.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("EMOFER_COMMIT", "unknown")
    return head + ("-dirty" if dirty else "")


TRAIN_KEYS = ("max_steps", "max_epochs", "lr", "lr_groups", "weight_decay", "warmup_steps", "scheduler", "precision",
              "accumulate_grad_batches", "gradient_clip_val", "stages", "feature_cache", "compile")
"""The ``train`` fields of a resolved preset that change what a benchmark measures (logging, output
folders, checkpoint cadence and launch settings do not, so new fields of that kind leave hashes alone)."""


def _measured(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "model" in obj and isinstance(obj.get("train"), dict):  # a resolved preset; its eval section
            obj = {k: v for k, v in obj.items() if k != "eval"}  # is not used: scripts call read-outs directly
            obj["train"] = {k: v for k, v in obj["train"].items() if k in TRAIN_KEYS}
        return {k: _measured(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_measured(v) for v in obj]
    if isinstance(obj, str):  # generated assets live in the cache: the same recipe wherever the cache is
        from emofer.paths import default_cache_dir

        cache = str(default_cache_dir())
        if obj.startswith(cache):
            return "$EMOFER_CACHE" + obj[len(cache) :]
    return obj


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of what a benchmark measured (sizes, presets as resolved, settings).

    In a resolved preset only the :data:`TRAIN_KEYS` of ``train`` count, and ``eval`` does not.
    """
    return hashlib.sha256(json.dumps(_measured(config), sort_keys=True, default=str).encode()).hexdigest()[:12]


def preset(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A preset's config as resolved now (for :func:`config_hash`)."""
    from omegaconf import OmegaConf

    import emofer

    return OmegaConf.to_container(emofer.load_config(name, overrides or []), resolve=True)


def peak_memory(fn: Callable[[], Any], device: Any = None) -> tuple[int, Any]:
    """Peak bytes allocated by tensors during ``fn()`` above what was allocated before it, and its result.

    On CUDA: ``torch.cuda.max_memory_allocated``. On the CPU: every allocation
    and free of the CPU allocator recorded by ``torch.profiler``
    (``profile_memory``), summed in order.
    """
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if "CPU" in str(e.device_type()):
            current += e.nbytes()
            peak = max(peak, current)
    return peak, out


def report(title: str, records: list[Record], json_path: Path | None, extra: dict[str, Any] | None = None,
           config: dict[str, Any] | None = None) -> None:
    """Prints the records as a table and writes them (with the machine, commit and config hash) as JSON.

    ``config`` is what the run measured, as the script's ``config(args)``
    gives it; its hash goes into every record, and the config itself, the
    script and its arguments into the ``extra`` record, so
    ``tests/test_benchmarks.py`` can tell when cited results no longer
    describe the code.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("name", "value", "unit", "q1–q3 over rounds", "target", "meets"):
        table.add_column(col)
    for r in records:
        meets = "" if r.meets_target is None else ("yes" if r.meets_target else "NO")
        spread = "" if r.spread is None else f"{r.spread[0]:.4g}–{r.spread[1]:.4g}"
        table.add_row(r.name, f"{r.value:.4g}", r.unit, spread, r.target or "", meets)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    info = machine()
    stamp = {"commit": commit(), "config_hash": config_hash(config or {})}
    console.print(f"machine: {info}")
    console.print(f"commit {stamp['commit']}, config hash {stamp['config_hash']}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = [asdict(r) | {"benchmark": title, "machine": info} | stamp for r in records]
        run = {"script": Path(sys.argv[0]).name, "argv": sys.argv[1:], "config": config or {}}
        payload.append({"name": "extra", "value": None, "unit": "", "target": None, "meets_target": None,
                        "benchmark": title, "detail": (extra or {}) | {"run": run}} | stamp)
        tmp = json_path.with_suffix(json_path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(json_path)
        console.print(f"wrote {json_path}")
