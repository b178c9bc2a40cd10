"""Evaluation suites: the data sets, protocols and folds a paper reports, evaluated and tabulated as it prints them.

A suite file (YAML; shipped ones in ``emofer/configs/suites/``, ``emofer list
suites``) names data sets::

    name: fer-videos
    sets:
      - id: dfew                       # the row name, the key of reference-results.yaml
        title: DFEW
        dataset: {name: dfew}          # a DATASETS config without root, split and fold
        root: DFEW                     # relative to --data-root, or absolute
        folds: [1, 2, 3, 4, 5]         # each fold trained and tested on its own split
        protocol: 7 classes, 5-fold cross-validation
        val: {split: val}              # optional: the validation split (for eval.temperature=fit)

:func:`run_suite` evaluates a model on every set (and fold) with
:func:`emofer.evaluation.evaluate`; :func:`write_suite` writes ``suite.md``,
``suite.csv`` and ``suite.png``: per set UAR and WAR in percent, the mean ±
sample std over folds where folded, next to the reference rows of
``reference-results.yaml``. A grid with ``suite:`` trains one run per
(set, fold) (:func:`grid_points`); ``--model`` pointing at that grid's
folder evaluates each fold with its own model.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import json
import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.config import PRESET_DIR, ConfigError, atomic_write_bytes, atomic_write_text
from emofer.paths import MODEL_DIR

SUITE_DIR = PRESET_DIR / "suites"
REFERENCE_FILE = SUITE_DIR / "reference-results.yaml"
"""Published numbers per suite set id (``docs/reference-results.yaml`` links to it)."""
DATA_ENV = "EMOFER_DATA"
"""Environment variable of the default data root (else ``data``)."""
_SET_KEYS = {"id", "title", "dataset", "root", "folds", "protocol", "val"}


@dataclass
class SuiteSet:
    """One data set of a suite under one protocol (see the module docstring for the keys)."""

    id: str
    dataset: dict[str, Any]
    root: str
    title: str = ""
    folds: list[int] = field(default_factory=list)
    protocol: str = ""
    val: dict[str, Any] | None = None

    def entry(self, root: str, split: str, fold: int | None = None) -> dict[str, Any]:
        """The ``data.train``/``data.test`` entry of ``split`` (and ``fold``)."""
        out = {**self.dataset, "root": root, "split": split}
        if fold is not None:
            out["fold"] = fold
        return out

    def points(self) -> list[int | None]:
        """The folds, or ``[None]`` for an unfolded set."""
        return list(self.folds) or [None]


@dataclass
class Suite:
    """A parsed suite file."""

    name: str
    sets: list[SuiteSet]
    description: str = ""

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] | Mapping[str, Any]) -> Suite:
        """A shipped suite by name, a suite YAML path, or a parsed mapping."""
        if isinstance(name_or_path, Mapping):
            raw, where = dict(name_or_path), "suite"
        else:
            path = Path(name_or_path)
            if not path.exists():
                path = SUITE_DIR / f"{name_or_path}.yaml"
            if not path.exists():
                close = difflib.get_close_matches(str(name_or_path), list_suites(), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"no suite {str(name_or_path)!r}.{hint} Shipped: {', '.join(list_suites())}")
            raw, where = OmegaConf.to_container(OmegaConf.load(path), resolve=True), str(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("sets"), list) or not raw["sets"]:
            raise ConfigError(f"{where}: a suite is a mapping with a non-empty 'sets:' list")
        sets = [_parse_set(s, f"{where}: sets[{i}]") for i, s in enumerate(raw["sets"])]
        ids = [s.id for s in sets]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{where}: set ids are not unique: {ids}")
        return cls(str(raw.get("name", Path(where).stem)), sets, str(raw.get("description", "")))

    def select(self, ids: list[str] | None) -> Suite:
        """The suite restricted to the sets ``ids`` (all when None), in the suite's order."""
        if not ids:
            return self
        unknown = [i for i in ids if i not in {s.id for s in self.sets}]
        if unknown:
            raise ConfigError(f"suite {self.name}: no set(s) {unknown}; it has {[s.id for s in self.sets]}")
        return Suite(self.name, [s for s in self.sets if s.id in ids], self.description)


def _parse_set(raw: Any, where: str) -> SuiteSet:
    if not isinstance(raw, Mapping) or set(raw) - _SET_KEYS or "id" not in raw or "dataset" not in raw:
        raise ConfigError(f"{where}: expected a mapping with id and dataset (keys: {sorted(_SET_KEYS)}), got {raw!r}")
    dataset = dict(raw["dataset"])
    if "name" not in dataset or set(dataset) & {"root", "split", "fold"}:
        raise ConfigError(f"{where}: dataset needs 'name' and leaves root, split and fold to the suite")
    folds = [int(f) for f in raw.get("folds") or []]
    return SuiteSet(str(raw["id"]), dataset, str(raw.get("root", raw["id"])), str(raw.get("title", raw["id"])),
                    folds, str(raw.get("protocol", "")), dict(raw["val"]) if raw.get("val") else None)


def list_suites() -> list[str]:
    """Names of the shipped suites."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml") if p.stem != "reference-results")


def resolve_root(s: SuiteSet, data_root: str | os.PathLike[str] | None, roots: Mapping[str, str] | None) -> str:
    """Where a set's files are: ``roots[id]``, else its ``root`` under ``data_root`` (``$EMOFER_DATA``, else ``data``)."""
    if roots and s.id in roots:
        return str(Path(roots[s.id]).expanduser())
    base = Path(data_root if data_root is not None else os.environ.get(DATA_ENV, "data")).expanduser()
    return str(base / s.root)


def run_id(s: SuiteSet, fold: int | None) -> str:
    """The grid run id of one (set, fold): ``dfew+fold=3``, ``ferv39k``."""
    return s.id if fold is None else f"{s.id}+fold={fold}"


def grid_points(spec: Mapping[str, Any], root: Path | None = None) -> list[tuple[list[str], dict[str, Any], dict[str, Any]]]:
    """The runs a grid's ``suite:`` adds: ``(id tokens, overrides, varied)`` per (set, fold).

    ``spec`` is ``{name, sets (ids; default all), folds (default the suite's),
    data_root, roots}``. Each run trains on the set's (fold's) train split and
    tests on its test split; ``val`` goes to ``data.val`` when the set has one.
    """
    unknown = set(spec) - {"name", "sets", "folds", "data_root", "roots"}
    if unknown or "name" not in spec:
        raise ConfigError(f"'suite:' needs name and may have sets, folds, data_root, roots; got {dict(spec)}")
    name = str(spec["name"])
    if root is not None and (root / name).exists():
        name = str(root / name)
    suite = Suite.load(name).select(spec.get("sets"))
    out = []
    for s in suite.sets:
        where = resolve_root(s, spec.get("data_root"), spec.get("roots"))
        folds = [f for f in s.points() if spec.get("folds") is None or f is None or f in spec["folds"]]
        for fold in folds:
            data: dict[str, Any] = {"train": [s.entry(where, "train", fold)], "test": [s.entry(where, "test", fold)]}
            if s.val:
                data["val"] = [{**s.entry(where, "train", fold), **s.val}]
            tokens = [s.id] + ([] if fold is None else [f"fold={fold}"])
            out.append((tokens, {"data": data}, {"set": s.id, **({} if fold is None else {"fold": fold})}))
    return out


def _model_for(model: Path, s: SuiteSet, fold: int | None) -> Path:
    """The model of one (set, fold): ``model/runs/<run id>/model`` when ``model`` is a suite grid's folder."""
    if not (model / "runs").is_dir():
        return model
    candidate = model / "runs" / run_id(s, fold) / MODEL_DIR
    if not candidate.is_dir():
        raise ConfigError(f"{model} is a grid folder but has no trained model {candidate} for {run_id(s, fold)}")
    return candidate


def run_suite(
    suite: Suite,
    cfg: DictConfig,
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    roots: Mapping[str, str] | None = None,
    progress: bool = True,
    on_point: Callable[[SuiteSet, int | None, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluates ``model`` on every (set, fold) of a suite into ``out/<set>[/fold-<k>]``; returns the table rows.

    Args:
        suite: the suite.
        cfg: the evaluation config (read-out, batch size, frames, prompt variants, temperature);
            its ``data.test`` is replaced per set, its ``data.val`` where the set names a ``val`` split.
        model: a model or run folder (one model for every set), or a suite grid's folder
            (each (set, fold) with the model of its run).
        out: the suite's output folder.
        data_root: folder the sets' relative roots are under.
        roots: per set id, its folder (wins over ``data_root``).
        progress: show Lightning's progress bar.
        on_point: called after each (set, fold) with its metrics.
    """
    from emofer.evaluation import evaluate

    out, model = Path(out), Path(model)
    if str(cfg.eval.temperature).strip().lower() == "fit" and not cfg.data.val:
        missing = [s.id for s in suite.sets if not s.val]
        if missing:
            raise ConfigError(f"eval.temperature=fit: set(s) {missing} of suite {suite.name} have no validation "
                              "split; give one for all with data.val=[...]")
    per_set: dict[str, list[dict[str, Any]]] = {}
    for s in suite.sets:
        where = resolve_root(s, data_root, roots)
        for fold in s.points():
            point = copy.deepcopy(cfg)
            point.data.test = [s.entry(where, "test", fold)]
            if s.val:  # the set's own validation split; else the config's data.val stays
                point.data.val = [{**s.entry(where, "train", fold), **s.val}]
            target = out / s.id / (f"fold-{fold}" if fold is not None else "")
            metrics = evaluate(point, _model_for(model, s, fold), target, progress=progress)
            per_set.setdefault(s.id, []).append({"fold": fold, **metrics})
            if on_point is not None:
                on_point(s, fold, metrics)
    rows = [aggregate(s, per_set[s.id]) for s in suite.sets]
    atomic_write_text(out / "suite.json", json.dumps({"suite": suite.name, "rows": rows}, indent=2) + "\n")
    return rows


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(s: SuiteSet, points: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: per metric the mean and sample std over the folds (std None when unfolded)."""
    row: dict[str, Any] = {"set": s.id, "title": s.title, "protocol": s.protocol, "folds": len(points),
                           "num_samples": sum(int(p.get("num_samples", 0)) for p in points)}
    for key in ("uar", "war", "invalid_rate"):
        row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([float(p[key]) for p in points])
    eces = [v["ece"] for p in points for k, v in (p.get("calibration") or {}).items() if isinstance(v, dict)]
    row["ece_mean"], row["ece_std"] = _mean_std(eces)
    spreads = [v for p in points for v in (p.get("prompt_variants") or {}).values()]
    for key in ("war_std", "war_worst", "uar_worst"):
        values = [float(v[key]) for v in spreads if v.get(key) is not None]
        row[f"prompt_{key}"] = statistics.fmean(values) if values else None
    return row


def load_references(path: str | os.PathLike[str] = REFERENCE_FILE) -> dict[str, list[dict[str, Any]]]:
    """``{set id: [{method, kind, uar, war, source, note}]}`` from a reference-results file (numbers in percent)."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    sets = raw.get("sets") if isinstance(raw, dict) else None
    if not isinstance(sets, dict):
        raise ConfigError(f"{path}: expected 'sets:' mapping set ids to lists of {{method, uar, war, source}}")
    for sid, entries in sets.items():
        for e in entries:
            if not isinstance(e, dict) or "method" not in e or "source" not in e:
                raise ConfigError(f"{path}: sets.{sid}: every entry needs 'method' and 'source', got {e!r}")
    return sets  # type: ignore[return-value]


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _ref(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def suite_markdown(rows: list[dict[str, Any]], references: Mapping[str, list[dict[str, Any]]], name: str) -> str:
    """The paper-style table (methods × sets, UAR/WAR in %), the per-set detail, and the sources."""
    heads = ["method"] + [f"{r['title']} {m}" for r in rows for m in ("UAR", "WAR")]
    lines = [f"# Suite {name}", "", "UAR / WAR (and below: invalid rate, ECE) in percent; mean ± sample std "
             "over folds where folded.", "",
             "| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    cells = [_pct(r[f"{m}_mean"], r[f"{m}_std"]) for r in rows for m in ("uar", "war")]
    lines.append("| **this model** | " + " | ".join(cells) + " |")
    methods = list(dict.fromkeys(e["method"] for r in rows for e in references.get(r["set"], [])))
    sources: list[str] = []
    for method in methods:
        cells = []
        for r in rows:
            entry = next((e for e in references.get(r["set"], []) if e["method"] == method), None)
            if entry is not None and entry["source"] not in sources:
                sources.append(entry["source"])
            mark = f" [{sources.index(entry['source']) + 1}]" if entry is not None else ""
            cells += [_ref(entry and entry.get("uar")), _ref(entry and entry.get("war")) + mark]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| set | protocol | folds | samples | UAR | WAR | invalid | ECE | WAR worst prompt |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['title']} | {r['protocol']} | {r['folds']} | {r['num_samples']} | "
                     f"{_pct(r['uar_mean'], r['uar_std'])} | {_pct(r['war_mean'], r['war_std'])} | "
                     f"{_pct(r['invalid_rate_mean'])} | {_pct(r['ece_mean'], r['ece_std'])} | "
                     f"{_pct(r['prompt_war_worst'])} |")
    if sources:
        lines += ["", "Sources:", ""] + [f"{i}. {s}" for i, s in enumerate(sources, start=1)]
    notes = [f"- {r['title']}, {e['method']}: {e['note']}" for r in rows for e in references.get(r["set"], [])
             if e.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    return "\n".join(lines) + "\n"


def suite_csv(rows: list[dict[str, Any]], references: Mapping[str, list[dict[str, Any]]]) -> str:
    """Long format, every number in percent: one line for this model per set, then its reference rows."""
    buf = io.StringIO()
    fields = ["set", "method", "kind", "folds", "uar", "uar_std", "war", "war_std", "invalid_rate", "ece", "source"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()

    def pct(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 4)

    for r in rows:
        writer.writerow({"set": r["set"], "method": "this model", "kind": "measured", "folds": r["folds"],
                         **{k: pct(r[f"{k}_mean"]) for k in ("uar", "war", "invalid_rate", "ece")},
                         "uar_std": pct(r["uar_std"]), "war_std": pct(r["war_std"]), "source": ""})
        for e in references.get(r["set"], []):
            writer.writerow({"set": r["set"], "method": e["method"], "kind": e.get("kind", ""), "uar": e.get("uar"),
                             "war": e.get("war"), "source": e["source"]})
    return buf.getvalue()


def suite_chart(rows: list[dict[str, Any]], references: Mapping[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """UAR/WAR bars per set (± std over folds) with the reference numbers as markers."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 1.3 * len(rows) + 2.5), 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for offset, key, label in ((-0.2, "uar", "UAR"), (0.2, "war", "WAR")):
        means = [100 * (r[f"{key}_mean"] or 0) for r in rows]
        stds = [100 * (r[f"{key}_std"] or 0) for r in rows]
        bars = ax.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, label=f"{label} (this model)")
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize=7, label_type="center")
    methods = list(dict.fromkeys(e["method"] for r in rows for e in references.get(r["set"], [])))
    markers = "^vsDPX*o"
    for m, method in enumerate(methods):
        pts = [(i + offset, float(e[key])) for i, r in enumerate(rows) for e in references.get(r["set"], [])
               for offset, key in ((-0.2, "uar"), (0.2, "war")) if e["method"] == method and e.get(key) is not None]
        if pts:  # a method without any number (not filled in) gets no marker
            ax.scatter(*zip(*pts, strict=True), marker=markers[m % len(markers)], color=f"C{m + 2}", s=22,
                       zorder=3, label=method)
    ax.set_xticks(x, [f"{r['title']}" + (f"\n({r['folds']} folds)" if r["folds"] > 1 else "") for r in rows], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("percent")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def write_suite(
    rows: list[dict[str, Any]], out: str | os.PathLike[str], name: str,
    references: Mapping[str, list[dict[str, Any]]] | None = None,
) -> str:
    """Writes ``suite.md``, ``suite.csv`` and ``suite.png`` into ``out``; returns the Markdown."""
    out = Path(out)
    refs = load_references() if references is None else references
    text = suite_markdown(rows, refs, name)
    atomic_write_text(out / "suite.md", text)
    atomic_write_text(out / "suite.csv", suite_csv(rows, refs))
    suite_chart(rows, refs, out / "suite.png", f"suite {name}")
    return text
