"""A grid's results as files: ``results.csv``, ``results.md``, a UAR/WAR bar chart, confusion matrices.

When a grid varies ``seed`` (or ``fold``: a grid over a suite's folds), the runs
that differ only in their seed (or fold) are also summarised — mean and
standard deviation of each metric over the seeds (folds) — in
``summary.csv``, ``summary.md`` and ``summary.png`` (mean bars with ±1 std
whiskers): one seed of a small model can be far from its average, and the
summary is what to compare variants by.

Every file is written atomically (to a temporary file, then renamed), so a
killed grid never leaves a half-written result behind.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emofer.config import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


log = logging.getLogger(__name__)

COLUMNS = ("run", "status", "uar", "war", "macro_f1", "invalid_rate", "num_samples", "seconds")
"""The leading columns of ``results.csv`` (the varied values and ``error`` follow)."""


@dataclass
class RunResult:
    """The outcome of one run (a row of ``results.csv``)."""

    id: str
    status: str
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    varied: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False


def rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat dict per run: :data:`COLUMNS`, then the varied values, then ``error``."""
    varied_keys = list(dict.fromkeys(k for r in results for k in r.varied))
    out = []
    for r in results:
        row: dict[str, Any] = {"run": r.id, "status": r.status}
        for key in COLUMNS[2:-1]:
            value = r.metrics.get(key)
            row[key] = round(value, 4) if isinstance(value, float) else value
        row["seconds"] = None if r.seconds is None else round(r.seconds, 1)
        for key in varied_keys:
            row[key] = r.varied.get(key)
        row["error"] = r.error
        out.append(row)
    return out


SEED_KEY = "seed"
"""The varied key that :func:`summary_rows` averages over."""
AVERAGED_KEYS = (SEED_KEY, "fold")
"""Every varied key :func:`summary_rows` averages over: seeds, and the folds of a suite grid."""
SUMMARY_METRICS = ("uar", "war", "macro_f1", "invalid_rate")


def seed_groups(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs that differ only in their seed (or fold), keyed by the run id without its ``seed=N``
    (``fold=N``) part.

    Empty when no run varies ``seed`` or ``fold``.
    """
    if not any(key in r.varied for r in results for key in AVERAGED_KEYS):
        return {}
    prefixes = tuple(f"{key}=" for key in AVERAGED_KEYS)
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        name = "+".join(t for t in r.id.split("+") if not t.startswith(prefixes)) or "run"
        groups.setdefault(name, []).append(r)
    return groups


def summary_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per seed group (see :func:`seed_groups`): ``run``, ``seeds`` (finished runs), ``runs``, then
    ``<metric>_mean`` and ``<metric>_std`` (sample std; None with fewer than two finished seeds)."""
    out = []
    for name, runs in seed_groups(results).items():
        done = [r for r in runs if r.metrics.get("uar") is not None]
        row: dict[str, Any] = {"run": name, "seeds": len(done), "runs": len(runs)}
        for key in SUMMARY_METRICS:
            values = [float(r.metrics[key]) for r in done if r.metrics.get(key) is not None]
            row[f"{key}_mean"] = round(statistics.fmean(values), 4) if values else None
            row[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
        out.append(row)
    return out


def mean_std(row: Mapping[str, Any], key: str) -> str:
    """``"0.8421 ± 0.0310"`` for ``key`` of a :func:`summary_rows` row (no ``±`` with one seed, empty with none)."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return "" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def summary_markdown(summary: list[dict[str, Any]]) -> str:
    """The seed summary as a Markdown table: ``mean ± std`` per metric."""
    heads = ["run", "seeds / folds", "UAR", "WAR", "macro F1", "invalid"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in summary:
        cells = [row["run"], f"{row['seeds']} of {row['runs']}"]
        cells += [mean_std(row, key) for key in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def markdown_table(results: Sequence[RunResult]) -> str:
    """The results as a Markdown table (the columns of ``results.md``)."""
    table = rows(results)
    heads = ["run", "UAR", "WAR", "macro F1", "invalid", "seconds", "status"]
    keys = ["run", "uar", "war", "macro_f1", "invalid_rate", "seconds", "status"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in table:
        cells = [_fmt(row[k]) for k in keys]
        if row["error"]:
            cells[-1] += f" ({_fmt(row['error'])[:120]})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def bar_chart(results: Sequence[RunResult], path: str | os.PathLike[str], title: str = "") -> None:
    """A PNG bar chart of UAR and WAR per finished run."""
    import numpy as np

    done = [r for r in results if r.metrics.get("uar") is not None]
    fig = _figure(max(4.0, 1.1 * len(done) + 1.5), 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(done))
    for offset, key, label in ((-0.2, "uar", "UAR"), (0.2, "war", "WAR")):
        values = [r.metrics[key] for r in done]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, [r.id for r in done], rotation=20, ha="right", fontsize=8)
    classes = {len(r.metrics["confusion"]) for r in done if r.metrics.get("confusion")}
    if len(classes) == 1:  # every run has the same K classes: chance UAR is 1/K
        k = classes.pop()
        ax.axhline(1 / k, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{k})")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(title or "UAR / WAR per run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    _save(fig, Path(path))


def summary_chart(summary: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> None:
    """A PNG of mean UAR and WAR per seed group, with ±1 std whiskers."""
    import numpy as np

    shown = [row for row in summary if row["uar_mean"] is not None]
    fig = _figure(max(4.0, 1.1 * len(shown) + 1.5), 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(shown))
    for offset, key, label in ((-0.2, "uar", "UAR"), (0.2, "war", "WAR")):
        means = [row[f"{key}_mean"] for row in shown]
        stds = [row[f"{key}_std"] or 0.0 for row in shown]
        bars = ax.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, label=label)
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=7, padding=1, label_type="center")
    ax.set_xticks(x, [f"{row['run']} (n={row['seeds']})" for row in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mean over seeds (±1 std)")
    ax.set_title(title or "UAR / WAR over seeds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    _save(fig, Path(path))


def confusion_chart(metrics: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> None:
    """A PNG of a run's confusion matrix, rows normalised (true class) with counts printed."""
    import numpy as np

    counts = np.asarray(metrics["confusion"], dtype=float)
    columns = metrics["confusion_columns"]
    if counts[:, -1].sum() == 0:  # no invalid answers: leave the empty column out
        counts, columns = counts[:, :-1], columns[:-1]
    share = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    fig = _figure(1.0 + 0.55 * len(columns), 1.0 + 0.5 * len(counts))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            int(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if share[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(counts)), metrics["confusion_columns"][: len(counts)], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    _save(fig, Path(path))


def write_results(results: Sequence[RunResult], out: str | os.PathLike[str], charts: bool = True) -> None:
    """Writes ``results.csv`` and ``results.md`` into ``out`` and, with ``charts``, the PNGs.

    The charts are ``results.png`` (UAR/WAR per run) and ``runs/<id>/confusion.png``.
    A grid that varies ``seed`` also gets ``summary.csv``, ``summary.md`` and
    (with ``charts``) ``summary.png``: see :func:`summary_rows`.
    """
    out = Path(out)
    atomic_write_text(out / "results.csv", _csv(rows(results)))
    atomic_write_text(out / "results.md", markdown_table(results))
    summary = summary_rows(results)
    if summary:
        atomic_write_text(out / "summary.csv", _csv(summary))
        atomic_write_text(out / "summary.md", summary_markdown(summary))
    if not charts:
        return
    if any(r.metrics.get("uar") is not None for r in results):
        bar_chart(results, out / "results.png", title=f"UAR / WAR — {out.name}")
    if any(row["uar_mean"] is not None for row in summary):
        summary_chart(summary, out / "summary.png", title=f"UAR / WAR over seeds — {out.name}")
    for r in results:
        target = out / "runs" / r.id / "confusion.png"
        if r.metrics.get("confusion") is not None and not target.exists():
            confusion_chart(r.metrics, target, title=r.id)
