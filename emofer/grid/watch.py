"""Where a grid's runs stand, read cheaply from their folders (what ``emofer grid``'s live table shows).

A run's ``status.json`` gives its state; a running run's ``progress.json``
(kept current by the training loop, see :func:`emofer.experiment.progress_file`)
its step and loss; a finished run's ``metrics.json`` its UAR.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emofer.experiment import PROGRESS_FILE
from emofer.grid.folder import DONE, FAILED, METRICS_FILE, read_status


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being replaced
        return {}


def run_state(run_dir: Path) -> dict[str, Any]:
    """``{"status", "step", "max_steps", "loss", "uar", "error"}`` of one run folder (None where unknown)."""
    try:
        status = read_status(run_dir)
    except ValueError:
        status = {"status": "pending"}
    row: dict[str, Any] = {"status": status["status"], "step": None, "max_steps": None, "loss": None, "uar": None}
    row["error"] = status.get("error") if status["status"] == FAILED else None
    if status["status"] == DONE:
        row["uar"] = _json(run_dir / METRICS_FILE).get("uar")
    elif status["status"] == "running":
        progress = _json(run_dir / PROGRESS_FILE)
        row.update({k: progress.get(k) for k in ("step", "max_steps", "loss")})
    return row


def grid_states(out: Path, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`run_state` of every run, with its ``run`` id, in grid order."""
    return [{"run": run_id, **run_state(Path(out) / "runs" / run_id)} for run_id in run_ids]


def describe(row: dict[str, Any]) -> str:
    """One run's state in words: ``running step 40/300 loss 1.2345``, ``done uar 0.8421``, ``failed: …``."""
    text = str(row["status"])
    if row.get("step") is not None:
        text += f" step {row['step']}/{row.get('max_steps') or '?'}"
    if row.get("loss") is not None:
        text += f" loss {row['loss']:.4f}"
    if isinstance(row.get("uar"), float):
        text += f" uar {row['uar']:.4f}"
    if row.get("error"):
        text += f": {str(row['error']).splitlines()[-1][:100]}"
    return text
