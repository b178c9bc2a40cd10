"""The run-folder protocol every launcher shares: one folder per run, its status file and job record.

``OUT/runs/<id>/status.json`` says where a run is — ``queued`` (handed to
a launcher), ``running``, ``done`` or ``failed`` (with the error and its
traceback) — with the hash of the run's resolved config; no file means
``pending``. ``job.json`` records the job that runs it (launcher, job id,
job folder, host), so a grid whose controlling process died finds its jobs
again. The job writes ``running``, ``metrics.json`` and ``done``/``failed``
itself, so the grid collects a result the same way whatever ran it. Every
file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from emofer.config import atomic_write_text, save_config, to_yaml
from emofer.grid.fingerprint import changed_files
from emofer.report import RunResult

if TYPE_CHECKING:
    from emofer.grid.spec import RunSpec

log = logging.getLogger(__name__)

DONE, FAILED, RUNNING, QUEUED, PENDING = "done", "failed", "running", "queued", "pending"
STATUS_FILE, JOB_FILE, METRICS_FILE = "status.json", "job.json", "metrics.json"

Runner = Callable[..., Mapping[str, Any]]
"""Runs one experiment config in a folder and returns its metrics: ``runner(cfg, run_dir)``, and
``runner(cfg, run_dir, resume=True)`` to continue a preempted run (see :func:`emofer.experiment.run`)."""


def config_hash(cfg: DictConfig) -> str:
    """A short hash of a resolved config (what decides whether a finished run is still valid)."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``status.json`` (``{"status": "pending"}`` when there is none)."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return {"status": PENDING}
    return json.loads(path.read_text())


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Replaces ``status.json`` atomically."""
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=2, sort_keys=True) + "\n")


def read_job(run_dir: Path) -> dict[str, Any] | None:
    """The job recorded in a run folder (``launcher``, ``job_id``, ``folder``, ``host``), or None."""
    path = Path(run_dir) / JOB_FILE
    return json.loads(path.read_text()) if path.exists() else None


def record_job(
    run_dir: Path, launcher: str, job_id: str, folder: Path | None = None, gpus: list[int] | None = None
) -> dict[str, Any]:
    """Writes ``job.json``: which job of which launcher runs this run (and on which GPUs, when packed)."""
    job = {
        "launcher": launcher,
        "job_id": str(job_id),
        "folder": None if folder is None else str(folder),
        "host": socket.gethostname(),
        "submitted": time.time(),
    }
    if gpus:
        job["gpus"] = list(gpus)
    atomic_write_text(Path(run_dir) / JOB_FILE, json.dumps(job, indent=2, sort_keys=True) + "\n")
    return job


def prepare_folder(run_dir: Path, cfg: DictConfig, code: Mapping[str, str] | None = None) -> None:
    """A clean folder for a run about to be handed to a launcher: its config, status ``queued``
    and the fingerprint of its code (see :mod:`emofer.grid.fingerprint`), which the job keeps."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    status: dict[str, Any] = {"status": QUEUED, "config_hash": config_hash(cfg)}
    if code is not None:
        status["code"] = dict(code)
    write_status(run_dir, status)


def failed(
    run_dir: Path,
    spec: RunSpec,
    err: BaseException | str,
    seconds: float | None,
    digest: str | None,
    trace: str | None = None,
) -> RunResult:
    """Records a failed run (error and traceback in its ``status.json``)."""
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    log.error("run %s failed: %s", spec.id, message)
    trace = trace if trace is not None else ("" if isinstance(err, str) else traceback.format_exc())
    run_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": FAILED, "error": message, "traceback": trace, "seconds": seconds, "config_hash": digest}
    code = read_status(run_dir).get("code")  # kept: a failed run reruns when its code changes, too
    if code is not None:
        status["code"] = code
    write_status(run_dir, status)
    return RunResult(spec.id, FAILED, seconds=seconds, varied=spec.varied, error=message)


def collect(spec: RunSpec, run_dir: Path, skipped: bool = False) -> RunResult | None:
    """The result a run folder records (``done`` with its metrics, or ``failed``), or None when it has none."""
    status = read_status(run_dir)
    if status["status"] == DONE and (run_dir / METRICS_FILE).exists():
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        return RunResult(spec.id, DONE, status.get("seconds"), metrics, spec.varied, skipped=skipped)
    if status["status"] == FAILED:
        return RunResult(spec.id, FAILED, status.get("seconds"), {}, spec.varied, status.get("error"), skipped)
    return None


def finished_earlier(
    spec: RunSpec, cfg: DictConfig, run_dir: Path, retry_failed: bool, code: Mapping[str, str] | None = None
) -> RunResult | None:
    """The recorded result of a run that need not run again (done, or failed without ``retry_failed``).

    A run whose config changed, or (given ``code``, its current fingerprint) whose code changed
    since it ran, runs again, with a warning that names the changed files.
    """
    status = read_status(run_dir)
    same = status.get("config_hash") == config_hash(cfg)
    if not same:
        if status["status"] != PENDING:
            log.warning("run %s: its config changed since it ran; running it again", spec.id)
        return None
    changed = [] if code is None else changed_files(status.get("code"), code)
    if changed and status["status"] in (DONE, FAILED):
        log.warning("run %s: the code of its parts changed since it ran (%s); running it again", spec.id, ", ".join(changed))
        return None
    result = collect(spec, run_dir, skipped=True)
    if result is None or (result.status == FAILED and retry_failed):
        return None
    if result.status == DONE:
        log.info("run %s: finished earlier, skipped", spec.id)
    else:
        log.info("run %s: failed earlier (%s); --retry-failed reruns it", spec.id, result.error)
    return result


def execute(
    spec: RunSpec, cfg: DictConfig, run_dir: Path, runner: Runner, resume: bool = False, writer: bool = True
) -> RunResult:
    """Runs one run in its (prepared) folder and records the outcome: what every launcher's job does.

    Args:
        spec: the run.
        cfg: its resolved config.
        run_dir: its folder (see :func:`prepare_folder`).
        runner: trains and evaluates (``runner(cfg, run_dir)``).
        resume: the run was preempted: ``runner(cfg, run_dir, resume=True)`` continues it from its
            last checkpoint, and its time counts from its first start.
        writer: this process writes the status (the job's global rank 0; other ranks only train).
    """
    digest = config_hash(cfg)
    before = read_status(run_dir)
    started = before.get("started") if resume and before.get("started") else time.time()
    attempts = int(before.get("attempts", 0)) + 1 if resume else 1
    code = {"code": before["code"]} if "code" in before else {}
    if writer:
        if resume:
            log.info("run %s: continuing from its last checkpoint", spec.id)
        write_status(
            run_dir, {"status": RUNNING, "config_hash": digest, "started": started, "attempts": attempts, **code}
        )
    try:
        metrics = dict(runner(cfg, run_dir, resume=True) if resume else runner(cfg, run_dir))
    except Exception as err:  # recorded with its traceback; the grid goes on
        if not writer:
            raise
        return failed(run_dir, spec, err, time.time() - started, digest)
    seconds = time.time() - started
    if writer:
        if not (run_dir / METRICS_FILE).exists():
            atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        write_status(
            run_dir, {"status": DONE, "config_hash": digest, "seconds": seconds, "attempts": attempts, **code}
        )
    return RunResult(spec.id, DONE, seconds, metrics, spec.varied)
