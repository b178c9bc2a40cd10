"""A trained model's evaluation with its read-outs beyond UAR/WAR: calibration and prompt robustness.

:func:`evaluate` runs :func:`emofer.experiment.evaluate` (metrics and
predictions of the config's test sets) and then, in the same folder:

- **calibration** (``score`` and ``classifier`` read-outs, which give a score
  per label): per test set the expected calibration error and a reliability
  diagram ``reliability-<set>.png``, at ``T = 1`` and at ``eval.temperature``
  (a number, or ``fit``: one scalar fitted on the ``data.val`` sets, see
  :func:`emofer.calibration.fit_temperature`); ``calibration.json``;
- **prompt robustness** (``eval.prompt_variants``): every test set asked
  each variant's question (:mod:`emofer.robustness`); ``prompt_variants.md``
  and ``prompt_variants.json``.

Both are added to ``metrics.json`` under ``calibration`` and ``prompt_variants``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from emofer.calibration import (
    expected_calibration_error,
    fit_temperature,
    probabilities,
    reliability_bins,
    reliability_diagram,
)
from emofer.config import ConfigError, atomic_write_text
from emofer.experiment import METRICS_FILE, PREDICTIONS_FILE, build_datamodule, load_trained
from emofer.experiment import evaluate as evaluate_test
from emofer.robustness import evaluate_variants, summarize_variants, variants_from_config, variants_markdown

log = logging.getLogger(__name__)

CALIBRATION_FILE, VARIANTS_FILE = "calibration.json", "prompt_variants.json"


def set_scores(out: Path, metrics: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Per evaluated set, from ``predictions.jsonl``: (scores ``[N,C]``, true indices ``[N]``, classes)."""
    per = metrics.get("per_dataset") or {metrics["test_set"]: metrics}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in per}
    for line in (out / PREDICTIONS_FILE).read_text().splitlines():
        record = json.loads(line)
        rows[record["dataset"]].append(record)
    result = {}
    for name, records in rows.items():
        classes = list(per[name]["confusion_columns"][:-1])
        if not records or not records[0]["scores"]:
            continue
        scores = torch.tensor([[r["scores"][c] for c in classes] for r in records], dtype=torch.float64)
        targets = torch.tensor([classes.index(r["true"]) for r in records])
        result[name] = (scores, targets, classes)
    return result


def _temperature(cfg: DictConfig, model_path: str | os.PathLike[str], out: Path, progress: bool) -> tuple[float, list[str]]:
    """``eval.temperature`` as a number, fitting it on ``data.val`` first when it says ``fit``."""
    value = cfg.eval.temperature
    if isinstance(value, str) and value.strip().lower() == "fit":
        if not cfg.data.val:
            raise ConfigError("eval.temperature=fit fits on the validation sets: data.val lists none")
        val_cfg = copy.deepcopy(cfg)
        val_cfg.data.test = cfg.data.val
        val_cfg.eval.prompt_variants.orders = 0
        val_out = out / "val"
        metrics = evaluate_test(val_cfg, model_path, val_out, progress=progress)
        sets = set_scores(val_out, metrics)
        if not sets:
            raise ConfigError(f"eval.temperature=fit needs per-label scores; eval.mode={cfg.eval.mode!r} gives none")
        fitted = fit_temperature([s for s, _, _ in sets.values()], [t for _, t, _ in sets.values()])
        log.info("temperature %.4f fitted on %s", fitted, ", ".join(sets))
        return fitted, list(sets)
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"eval.temperature must be a positive number or 'fit', got {value!r}") from None
    if not temperature > 0:
        raise ConfigError(f"eval.temperature must be positive, got {temperature}")
    return temperature, []


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "set"


def calibrate(
    cfg: DictConfig, model_path: str | os.PathLike[str], out: Path, metrics: dict[str, Any], progress: bool = True
) -> dict[str, Any]:
    """ECE at ``T = 1`` and at ``eval.temperature`` per test set, reliability diagrams, ``calibration.json``."""
    temperature, fitted_on = _temperature(cfg, model_path, out, progress)
    n_bins = int(cfg.eval.calibration_bins)
    report: dict[str, Any] = {"temperature": temperature, "fitted_on": fitted_on, "n_bins": n_bins, "sets": {}}
    for name, (scores, targets, _) in set_scores(out, metrics).items():
        raw = probabilities(scores, 1.0)
        scaled = probabilities(scores, temperature)
        bins = reliability_bins(scaled, targets, n_bins)
        ece = expected_calibration_error(scaled, targets, n_bins)
        entry = {
            "ece": ece,
            "ece_t1": expected_calibration_error(raw, targets, n_bins),
            "nll": float(torch.nn.functional.cross_entropy(scores / temperature, targets)),
            "nll_t1": float(torch.nn.functional.cross_entropy(scores, targets)),
            "mean_confidence": float(scaled.max(1).values.mean()),
            "bins": bins,
            "diagram": f"reliability-{_slug(name)}.png",
        }
        title = f"{name} (T = {temperature:.3g})"
        reliability_diagram(bins, out / entry["diagram"], title=title, ece=ece)
        report["sets"][name] = entry
    atomic_write_text(out / CALIBRATION_FILE, json.dumps(report, indent=2) + "\n")
    return report


def prompt_robustness(cfg: DictConfig, model_path: str | os.PathLike[str], out: Path) -> dict[str, Any] | None:
    """Evaluates the config's test sets under ``eval.prompt_variants``; None when it asks for none."""
    variants = variants_from_config(cfg.eval.prompt_variants)
    if not variants:
        return None
    model = load_trained(model_path, cfg)
    datamodule = build_datamodule(cfg, model)
    datamodule.setup("test")
    per_set = evaluate_variants(
        model, datamodule.test_dataloader(), datamodule.names("test"), variants, cfg.eval.mode, cfg.eval.max_new_tokens
    )
    result = {name: {"variants": rows, "summary": summarize_variants(rows)} for name, rows in per_set.items()}
    atomic_write_text(out / VARIANTS_FILE, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "prompt_variants.md", variants_markdown(per_set))
    return result


def evaluate(
    cfg: DictConfig, model_path: str | os.PathLike[str], out: str | os.PathLike[str], progress: bool = True
) -> dict[str, Any]:
    """:func:`emofer.experiment.evaluate`, then calibration and prompt robustness (see the module docstring).

    The extra read-outs run in one process: under a multi-process strategy
    they are skipped with a warning.
    """
    out = Path(out)
    fit = str(cfg.eval.temperature).strip().lower() == "fit"
    if fit and not cfg.data.val:  # refused before the test evaluation, not after it
        raise ConfigError("eval.temperature=fit fits on the validation sets: data.val lists none")
    metrics = evaluate_test(cfg, model_path, out, progress=progress)
    if metrics.get("world_size", 1) > 1:
        log.warning("calibration and prompt robustness run in one process; skipped under %d processes",
                    metrics["world_size"])
        return metrics
    if cfg.eval.mode != "generate":
        calibration = calibrate(cfg, model_path, out, metrics, progress)
        metrics["calibration"] = {
            "temperature": calibration["temperature"],
            **{name: {k: s[k] for k in ("ece", "ece_t1")} for name, s in calibration["sets"].items()},
        }
    robustness = prompt_robustness(cfg, model_path, out)
    if robustness is not None:
        metrics["prompt_variants"] = {name: r["summary"] for name, r in robustness.items()}
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics
