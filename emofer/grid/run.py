"""Running a grid: hand its unfinished runs to a launcher, wait, collect the results from the run folders."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from emofer.config import ConfigError, atomic_write_text
from emofer.grid.fingerprint import changed_files, fingerprint
from emofer.grid.folder import (
    DONE,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    Runner,
    collect,
    config_hash,
    failed,
    finished_earlier,
    prepare_folder,
    read_job,
    read_status,
)
from emofer.grid.launchers import Launcher, Task, job_state, make_launcher, pid_alive, slurm_shape
from emofer.grid.spec import Grid, RunSpec, launcher_section
from emofer.paths import MODEL_DIR
from emofer.report import RunResult
from emofer.tracking import group_runs

log = logging.getLogger(__name__)

_WAIT = "wait"
CONTROLLER_FILE = "grid.json"


class GridBusyError(RuntimeError):
    """Another live grid controls the output folder."""


@contextmanager
def _controller(out: Path) -> Iterator[None]:
    """Records this process as the grid's controller in ``OUT/grid.json``; refuses a second live one."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONTROLLER_FILE
    if path.exists():
        other = json.loads(path.read_text())
        mine = other.get("host") == socket.gethostname() and other.get("pid") not in (None, os.getpid())
        if mine and pid_alive(int(other["pid"])):
            raise GridBusyError(f"another grid is running in {out} (process {other['pid']}, see {path})")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    atomic_write_text(path, json.dumps(me, indent=2) + "\n")
    yield


def _resolve(grid: Grid | str | os.PathLike[str], launcher: str | None) -> tuple[Grid, dict[str, Any]]:
    if not isinstance(grid, Grid):
        grid = Grid.load(grid)
    section = grid.launcher if launcher is None else launcher_section({"launcher": grid.launcher}, launcher)
    return grid, section


def run_grid(
    grid: Grid | str | os.PathLike[str],
    out: str | os.PathLike[str],
    retry_failed: bool = False,
    runner: Runner | None = None,
    prepare: Callable[[DictConfig], DictConfig] | None = None,
    on_run_start: Callable[[RunSpec, int, int], None] | None = None,
    jobs: int | None = None,
    on_run_end: Callable[[RunResult, int, int], None] | None = None,
    launcher: str | None = None,
    wait: bool = True,
    only: Sequence[str] | None = None,
    rerun: Sequence[str] = (),
    force: bool = False,
) -> list[RunResult]:
    """Runs every run of a grid that is not finished yet and writes the grid's results.

    Runs are handed to the grid's launcher (``launcher:`` in the grid file,
    or ``launcher``; see :mod:`emofer.grid.launchers`). A run whose job is
    still queued or running from an earlier invocation (its ``job.json``)
    is followed, not started again; a run found interrupted starts over.

    Args:
        grid: a :class:`Grid` or the path of a grid YAML file.
        out: the grid's output folder.
        retry_failed: rerun runs recorded as failed (otherwise they are reported and skipped).
        runner: runs one config in a folder and returns its metrics; default
            :func:`emofer.experiment.run` (a job of a submitit launcher unpickles it:
            a module-level function or a picklable object).
        prepare: a last edit of each run's resolved config before it is saved and run.
        on_run_start: called with ``(run, index, total)`` when a run is handed to the launcher.
        jobs: runs at once for ``local``/``submitit-local`` (default: the grid's ``jobs:``, else 1).
        on_run_end: called with ``(result, index, total)`` after each run that executed.
        launcher: a launcher name that replaces the grid's (``--launcher``).
        wait: False submits every run and returns (``slurm``): the runs not finished are
            returned as ``queued``; run the grid again to collect them.
        only: run just these run ids (the others' recorded results are read, nothing of them runs).
        rerun: run these ids again even when they finished.
        force: run every (selected) run again.

    A run that finished is run again, too, when the code of its parts changed since (see
    :mod:`emofer.grid.fingerprint`). Interrupted (``KeyboardInterrupt``, which ``emofer grid``
    raises for SIGTERM too), the grid stops its local jobs (:meth:`Launcher.stop`) and re-raises.

    Returns:
        One :class:`RunResult` per run, in grid order.
    """
    from emofer.report import write_results

    grid, section = _resolve(grid, launcher)
    if runner is None:
        from emofer.experiment import run as runner
    jobs = grid.jobs if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if not wait and section["name"] != "slurm":
        raise ConfigError(f"only the slurm launcher submits without waiting (--no-wait), not {section['name']!r}")
    out = Path(out)
    check_ids(grid, {"--only": only or [], "--rerun": rerun})
    total = len(grid.runs)
    results: dict[int, RunResult] = {}

    def record(index: int, result: RunResult, executed: bool = False) -> None:
        results[index] = result
        write_results([results[i] for i in sorted(results)], out, charts=False)
        if executed and on_run_end is not None:
            on_run_end(result, index, total)

    with _controller(out):
        for stale in out.glob(".*.tmp"):  # left by a write that a kill interrupted
            stale.unlink()
        pretrained, base_model = _run_pretraining(grid, out, jobs)
        ex = make_launcher(section, out, jobs, runner, grid.name)
        todo: list[Task] = []
        active: list[Task] = []
        executing: set[str] = set()
        for index, spec in enumerate(grid.runs):
            run_dir = out / "runs" / spec.id
            if only is not None and spec.id not in only:  # not selected: what its folder holds, if anything
                record(index, collect(spec, run_dir, skipped=True) or RunResult(spec.id, PENDING, varied=spec.varied))
                continue
            try:
                cfg = _configure(spec, grid.name, out, [pretrained, prepare, ex.shape], base_model)
                code = fingerprint(cfg)
            except Exception as err:  # a run with a broken config is recorded, the grid goes on
                record(index, failed(run_dir, spec, err, 0.0, None))
                continue
            # a run started from another run's model reruns whenever that run does
            again = force or spec.id in rerun or spec.init_from in executing
            earlier = None if again else finished_earlier(spec, cfg, run_dir, retry_failed, code)
            if earlier is not None:
                record(index, earlier)
                continue
            task = Task(index, spec, cfg, run_dir, code=code)
            executing.add(spec.id)
            status, job = read_status(run_dir), read_job(run_dir)
            unfinished = status["status"] in (QUEUED, RUNNING) and status.get("config_hash") == config_hash(cfg)
            unfinished = unfinished and not again
            if unfinished and job is not None and ex.attach(task, job):
                log.info("run %s: following its job %s, started earlier", spec.id, job["job_id"])
                active.append(task)
                continue
            if status["status"] == RUNNING:
                log.warning("run %s was interrupted; restarting it from scratch", spec.id)
            todo.append(task)

        by_id = {t.spec.id: t for t in todo + active}
        grid_index = {spec.id: i for i, spec in enumerate(grid.runs)}

        def source_state(spec: RunSpec) -> str | None:
            """None when the run can start, ``_WAIT`` while its init_from run is unfinished, else why it cannot."""
            if spec.init_from is None:
                return None
            source = results.get(grid_index[spec.init_from])
            if source is None:
                return _WAIT
            if source.status == DONE:
                return None
            return f"its init_from run {spec.init_from!r} did not finish ({source.status}: {source.error})"

        try:
            while todo or active:
                started = _hand_over(ex, todo, active, by_id, source_state, record, on_run_start, total)
                ended = _collect_ended(ex, active, source_state, record)
                if not wait and not todo:
                    break
                if not started and not ended:
                    time.sleep(ex.poll_s)
                    ex.poll()
        except BaseException:  # Ctrl-C, SIGTERM: local jobs die with the grid (SLURM jobs go on)
            ex.stop(active)
            raise
        for task in active:  # submitted, not waited for
            results[task.index] = RunResult(task.spec.id, QUEUED, varied=task.spec.varied)
        write_results([results[i] for i in sorted(results)], out, charts=wait)
    return [results[i] for i in sorted(results)]


def check_ids(grid: Grid, given: Mapping[str, Sequence[str]]) -> None:
    """Refuses run ids (of ``--only``, ``--rerun``) that are not the grid's, naming them and the valid ones."""
    known = [spec.id for spec in grid.runs]
    for flag, ids in given.items():
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ConfigError(f"{flag}: no run {', '.join(map(repr, unknown))} in grid {grid.name}; its runs: {', '.join(known)}")


def _configure(
    spec: RunSpec,
    grid_name: str,
    out: Path,
    edits: list[Callable[[DictConfig], DictConfig] | None],
    base_model: Path | None = None,
) -> DictConfig:
    """A run's config as the grid runs it: started from its init_from run's model (or the grid's
    pretrained ``base_model``), its loggers grouped under the grid's name, then ``edits``
    (pretrained prior, the caller's ``prepare``, the launcher's shape)."""
    cfg = spec.config()
    if spec.init_from is not None:
        cfg.train.init_from = str((out / "runs" / spec.init_from / MODEL_DIR).resolve())
    if spec.from_base and base_model is not None:  # as a user starts from an imported LLaMA-VID
        cfg.train.init_from = str(base_model)
        cfg.train.init_missing = "keep"
    cfg = group_runs(cfg, grid_name)
    for edit in edits:
        cfg = edit(cfg) if edit is not None else cfg
    return cfg


def _hand_over(
    ex: Launcher,
    todo: list[Task],
    active: list[Task],
    by_id: dict[str, Task],
    source_state: Callable[[RunSpec], str | None],
    record: Callable[..., None],
    on_run_start: Callable[[RunSpec, int, int], None] | None,
    total: int,
) -> int:
    """Starts what can start now, in grid order; returns how many runs it started or settled."""
    ready: list[Task] = []
    after: dict[int, str] = {}
    settled = 0
    for task in list(todo):
        state = source_state(task.spec)
        if state == _WAIT:
            source = by_id.get(task.spec.init_from or "")
            if not (ex.dependencies and source is not None and source in active and source.job is not None):
                continue
            after[task.index] = str(source.job.job_id)
        elif state is not None:
            todo.remove(task)
            record(task.index, failed(task.run_dir, task.spec, RuntimeError(state), 0.0, config_hash(task.cfg)), True)
            settled += 1
            continue
        if not ex.fits(task):
            continue
        todo.remove(task)
        ready.append(task)
    if not ready:
        return settled
    for task in ready:
        prepare_folder(task.run_dir, task.cfg, task.code)
        if on_run_start is not None:
            on_run_start(task.spec, task.index, total)
    try:
        ex.start(ready, after)
    except Exception as err:  # e.g. sbatch refused the job: those runs fail, the grid goes on
        for task in ready:
            if task.job is None:
                ex.release(task)
                record(task.index, failed(task.run_dir, task.spec, err, 0.0, config_hash(task.cfg)), True)
                settled += 1
        ready = [t for t in ready if t.job is not None]
    active.extend(ready)
    return settled + len(ready)


def _collect_ended(
    ex: Launcher,
    active: list[Task],
    source_state: Callable[[RunSpec], str | None],
    record: Callable[..., None],
) -> int:
    """Records the result of every task whose job has ended (from its run folder); returns how many."""
    ended = 0
    for task in list(active):
        if not ex.ended(task):
            continue
        active.remove(task)
        ex.release(task)
        result = collect(task.spec, task.run_dir)
        if result is None:
            reason = source_state(task.spec)
            why = reason if reason not in (None, _WAIT) else ex.why(task)
            result = failed(task.run_dir, task.spec, why, None, config_hash(task.cfg))
        record(task.index, result, True)
        ended += 1
    return ended


def _pretrain_stage(stage: str, kwargs: dict[str, Any], log_file: Path | None = None, threads: int = 0) -> str:
    """Runs one pretraining stage (or finds it cached) and returns its path; in a worker process,
    its output goes to ``log_file`` and it uses ``threads`` torch threads."""
    if log_file is not None:  # pragma: no cover - runs in the worker processes
        import ctypes
        import signal
        import sys

        import torch

        if sys.platform.startswith("linux"):  # the worker dies with the grid
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as handle:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
        torch.set_num_threads(max(1, threads))
    if stage == "face_prior":
        from emofer.pretrain import pretrain_face_prior

        return str(pretrain_face_prior(**kwargs))
    from emofer.base_model import pretrain_base_model

    return str(pretrain_base_model(**kwargs))


_STAGE_MAIN = (
    "import json, sys; from pathlib import Path; from emofer.grid.run import _pretrain_stage; "
    "a = sys.argv[1:]; Path(a[4]).write_text(_pretrain_stage(a[0], json.loads(a[1]), Path(a[2]), int(a[3])))"
)


def _pretrain_at_once(stages: dict[str, dict[str, Any]], out: Path) -> dict[str, Path]:
    """Runs the stages at once, each in a subprocess (no multiprocessing pool: an interrupted grid
    terminates them and leaves no semaphores behind); returns each stage's path."""
    import subprocess
    import sys

    from emofer.grid.launchers import python_path

    threads = max(1, (os.cpu_count() or 1) // len(stages))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    procs = {}
    with python_path():
        for name, kwargs in stages.items():
            log_file, result = out / "logs" / f"pretrain-{name}.log", out / "logs" / f".pretrain-{name}.path"
            result.unlink(missing_ok=True)
            args = [name, json.dumps(kwargs), str(log_file), str(threads), str(result)]
            procs[name] = (subprocess.Popen([sys.executable, "-c", _STAGE_MAIN, *args], start_new_session=True), result)
    try:
        for name, (proc, result) in procs.items():
            if proc.wait() != 0 or not result.exists():
                log_file = out / "logs" / f"pretrain-{name}.log"
                raise RuntimeError(f"pretraining stage {name} failed (exit status {proc.returncode}); see {log_file}")
    finally:  # interrupted or failed: the other stage stops too
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    paths = {name: Path(result.read_text()) for name, (_, result) in procs.items()}
    for _, result in procs.values():
        result.unlink()
    return paths


def _run_pretraining(
    grid: Grid, out: Path, jobs: int
) -> tuple[Callable[[DictConfig], DictConfig] | None, Path | None]:
    """Runs the grid's pretraining stages (or finds them cached).

    Returns what hands the face prior to every run whose ``model.face_prior``
    is that prior, and the base model's folder (for runs with ``init_from:
    base-model``). With ``jobs > 1`` and both stages, they train at once in
    two processes, their output in ``OUT/logs/pretrain-<stage>.log`` (the
    base model has no face prior, so neither waits for the other).
    """
    stages = {name: dict(grid.pretrain[name]) for name in ("face_prior", "base_model") if name in grid.pretrain}
    if jobs > 1 and len(stages) > 1:
        paths = _pretrain_at_once(stages, out)
    else:
        paths = {name: Path(_pretrain_stage(name, kwargs)) for name, kwargs in stages.items()}
    prior = None
    if "face_prior" in paths:
        from emofer.pretrain import use_pretrained_prior

        recipe, weights = stages["face_prior"], paths["face_prior"]
        prior = lambda cfg: use_pretrained_prior(cfg, recipe["prior"], weights)  # noqa: E731
    return prior, paths.get("base_model")


def grid_status(
    grid: Grid | str | os.PathLike[str], out: str | os.PathLike[str], launcher: str | None = None
) -> list[dict[str, Any]]:
    """Where every run of a grid stands, read from its folder and its job, starting nothing.

    Returns:
        One row per run: ``run``, ``status`` (``pending``, ``queued``, ``running``, ``done``,
        ``failed``, ``interrupted`` — its job ended without a result — or ``changed`` — its config
        or the code of its parts differs from the recorded run's), ``job`` (the job id) and ``detail`` (the error's last
        line, the UAR of a finished run, or the job's log folder).
    """
    grid, section = _resolve(grid, launcher)
    out = Path(out)
    slurm = section["name"] == "slurm"
    rows = []
    for spec in grid.runs:
        run_dir = out / "runs" / spec.id
        status, job = read_status(run_dir), read_job(run_dir)
        state, detail = status["status"], ""
        try:
            cfg = _configure(spec, grid.name, out, [lambda c: slurm_shape(c, section) if slurm else c])
            # a pretrained prior's weights are not known without pretraining: no change is told then
            known = not grid.pretrain
            changed = known and state != PENDING and status.get("config_hash") not in (None, config_hash(cfg))
            code_changed = changed_files(status.get("code"), fingerprint(cfg)) if state in (DONE, FAILED) else []
        except Exception as err:
            state, detail, changed, code_changed = FAILED, f"{type(err).__name__}: {err}", False, []
        if state in (QUEUED, RUNNING) and job is not None:
            live = job_state(job)
            if live == "ended":
                state, detail = "interrupted", f"its job ended without a result (logs: {job.get('folder')})"
            elif live in ("queued", "running"):
                state = live
        if state == FAILED and not detail:
            lines = [line for line in str(status.get("error") or "").splitlines() if line.strip()]
            detail = lines[-1] if lines else ""
        if state == DONE:
            metrics = run_dir / "metrics.json"
            uar = json.loads(metrics.read_text()).get("uar") if metrics.exists() else None
            detail = f"uar {uar:.4f}" if isinstance(uar, float) else ""
        if changed and state not in ("queued", "running"):
            state, detail = "changed", "its config changed since it ran: the next grid run reruns it"
        elif code_changed and state not in ("queued", "running"):
            state, detail = "changed", f"the code of {', '.join(code_changed)} changed since it ran: the next grid run reruns it"
        rows.append({"run": spec.id, "status": state, "job": (job or {}).get("job_id", ""), "detail": detail})
    return rows
