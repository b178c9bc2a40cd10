"""The launchers a grid hands its runs to, behind one interface.

- ``local``: with ``jobs: 1``, runs execute one after the other in the grid's
  process; with ``jobs: N``, N at once, each a process of submitit's local
  executor with ``cpu_count // N`` torch threads;
- ``local-gpus``: packs runs onto this node's GPUs — a run with
  ``train.devices: k`` gets ``k`` free GPUs (``CUDA_VISIBLE_DEVICES``) and
  starts when they are free;
- ``slurm``: every run is a submitit SLURM job (the runs that wait on nothing
  as one job array), with the resources of the grid's ``launcher:`` section
  and one task per GPU, so Lightning's SLURM detection runs DDP across the
  job's nodes; a run with ``init_from`` depends on its source's job
  (``afterok``);
- ``submitit-local``: submitit's local executor, the code path of ``slurm``
  without a cluster.

A launcher only starts jobs and tells when they have ended; the job writes
the run folder (:mod:`emofer.grid.folder`), which is where the grid reads
every result from. Submitted jobs outlive the grid's process and their ids
are recorded in the run folders, so a grid run again re-attaches to them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from emofer.config import ConfigError
from emofer.grid.folder import Runner, execute, record_job
from emofer.grid.spec import RunSpec

QUEUED_STATES = {"PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "PREEMPTED", "STAGE_OUT", "SIGNALING"}


@dataclass
class Task:
    """A run handed to a launcher: where it is in the grid, its config and folder, and its job."""

    index: int
    spec: RunSpec
    cfg: DictConfig
    run_dir: Path
    resume: bool = False
    job: Any = None
    gpus: list[int] = field(default_factory=list)
    code: dict[str, str] = field(default_factory=dict)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (False where that cannot be told: not POSIX)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a finished child of ours lingers as a zombie
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def job_state(job: Mapping[str, Any]) -> str:
    """``queued``, ``running`` or ``ended`` for a recorded job (``unknown`` when its launcher cannot tell)."""
    if job["launcher"] == "slurm":
        import submitit

        state = submitit.SlurmJob(job["folder"], job["job_id"]).watcher.get_state(job["job_id"], mode="force")
        state = state.split()[0].upper() if state else "UNKNOWN"
        return "queued" if state in QUEUED_STATES else "running" if state in RUNNING_STATES else (
            "unknown" if state == "UNKNOWN" else "ended"
        )
    if job.get("host") != socket.gethostname():
        return "unknown"
    return "running" if pid_alive(int(job["job_id"])) else "ended"


@dataclass
class _RecordedJob:
    """A job started by an earlier grid process, followed through :func:`job_state`."""

    record: dict[str, Any]

    @property
    def job_id(self) -> str:
        return self.record["job_id"]

    def done(self) -> bool:
        return job_state(self.record) not in ("queued", "running")


@contextlib.contextmanager
def python_path() -> Iterator[None]:
    """Jobs unpickle the runner: they get this process's ``sys.path`` (for runners of scripts and tests)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def visible_gpus(gpus: int | list[int] | None) -> list[int]:
    """The GPU ids runs are packed onto: ``gpus`` (a count or ids), else ``CUDA_VISIBLE_DEVICES``, else all."""
    if isinstance(gpus, int):
        return list(range(gpus))
    if gpus is not None:
        return [int(g) for g in gpus]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(g) for g in visible.split(",") if g.strip()]
    import torch

    return list(range(torch.cuda.device_count()))


def devices_asked(cfg: DictConfig) -> int:
    """The GPUs a run asks for: ``train.devices`` as a count (``auto`` and ``-1`` are one)."""
    devices = cfg.train.devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            return 1
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    if isinstance(devices, int):
        return max(1, devices)
    return len(devices)


class Launcher:
    """Runs the grid's runs in this process, one after the other (``local`` with ``jobs: 1``)."""

    name = "local"
    dependencies = False
    """True: a run with ``init_from`` is submitted at once, its job depending on its source's (``afterok``)."""
    poll_s = 0.2

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.busy = False

    def shape(self, cfg: DictConfig) -> DictConfig:
        """The run's config as this launcher runs it (errors for a run it cannot run)."""
        return cfg

    def fits(self, task: Task) -> bool:
        """Whether the task can start now; if so its resources are taken."""
        if self.busy:
            return False
        self.busy = True
        return True

    def start(self, tasks: list[Task], after: Mapping[int, str]) -> None:
        """Starts the tasks (``after``: task index to the job id its job must wait for)."""
        for task in tasks:
            record_job(task.run_dir, self.name, str(os.getpid()))
            task.job = execute(task.spec, task.cfg, task.run_dir, self.runner, resume=task.resume)

    def poll(self) -> None:
        """Refreshes what :meth:`ended` reads (once per wait of the grid)."""

    def ended(self, task: Task) -> bool:
        """Whether the task's job has ended (the run folder then holds its result, unless it was killed)."""
        return task.job.done() if hasattr(task.job, "done") else True

    def release(self, task: Task) -> None:
        """Frees what the ended task held."""
        self.busy = False

    def why(self, task: Task) -> str:
        """Why a job ended without a result in its run folder."""
        job_id = getattr(task.job, "job_id", None)
        state = getattr(task.job, "state", "ended")
        text = f"its job {job_id} ended ({state}) without a result"
        stderr = getattr(getattr(task.job, "paths", None), "stderr", None)
        if stderr is not None and Path(stderr).exists():
            lines = [line for line in Path(stderr).read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                text += f"; its log ends: {lines[-1].strip()}"
        return text

    def stop(self, tasks: list[Task]) -> None:
        """Stops the tasks' jobs that run on this machine (the grid was interrupted); waits until they end."""
        local = [t.job for t in tasks if t.job is not None and getattr(t.job, "record", {}).get("launcher") != "slurm"]
        # a run of this process (its result, or a job recorded with this process's id) has no job to stop
        local = [job for job in local if hasattr(job, "done") and str(job.job_id) != str(os.getpid())]
        for job in local:
            _interrupt_job(int(job.job_id))
        _wait_ended(local)

    def attach(self, task: Task, job: Mapping[str, Any]) -> bool:
        """Follows a job an earlier grid process started, when it is still queued or running."""
        family = "slurm" if self.name == "slurm" else "local"
        if ("slurm" if job["launcher"] == "slurm" else "local") != family:
            return False
        if job_state(job) not in ("queued", "running"):
            return False
        task.job = _RecordedJob(dict(job))
        return True


class SubmititLauncher(Launcher):
    """Runs every run as a submitit job: ``slurm``, or submitit's local executor (see the module docstring)."""

    def __init__(self, section: Mapping[str, Any], out: Path, jobs: int, runner: Runner, grid_name: str) -> None:
        import submitit

        super().__init__(runner)
        self.name = section["name"]
        self.section = dict(section)
        self.jobs_dir = (out / "jobs").resolve()
        folder = self.jobs_dir / "%j"
        self.running: set[int] = set()
        self.used_gpus: set[int] = set()
        self.threads: int | None = None
        if self.name == "slurm":
            self.executor: Any = submitit.SlurmExecutor(folder, max_num_timeout=section.get("max_num_timeout", 3))
            self.base = slurm_parameters(section, grid_name)
            self.executor.update_parameters(**self.base)
            self.dependencies = True
            self.poll_s = float(section.get("poll_s", 30))
            self.gpus: list[int] = []
            return
        self.executor = submitit.LocalExecutor(folder)
        self.executor.update_parameters(timeout_min=int(section.get("timeout_min", 7 * 24 * 60)))
        self.gpus = visible_gpus(section.get("gpus"))
        self.slots = None if self.name == "local-gpus" else jobs
        if self.name != "local-gpus" and jobs > 1:
            self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def shape(self, cfg: DictConfig) -> DictConfig:
        if self.name == "slurm":
            return slurm_shape(cfg, self.section)
        if self.name == "local-gpus":
            if int(cfg.train.num_nodes) != 1:
                raise ConfigError(f"local-gpus runs on one node; run {cfg.name} has train.num_nodes={cfg.train.num_nodes}")
            if devices_asked(cfg) > len(self.gpus):
                raise ConfigError(
                    f"run {cfg.name} asks for train.devices={cfg.train.devices} but this node has "
                    f"{len(self.gpus)} GPU(s) ({self.gpus})"
                )
        return cfg

    def fits(self, task: Task) -> bool:
        if self.name == "slurm":
            return True
        if self.name == "local-gpus":
            free = [g for g in self.gpus if g not in self.used_gpus]
            need = devices_asked(task.cfg)
            if need > len(free):
                return False
            task.gpus = free[:need]
            self.used_gpus.update(task.gpus)
        elif len(self.running) >= (self.slots or 1):
            return False
        self.running.add(task.index)
        return True

    def release(self, task: Task) -> None:
        self.running.discard(task.index)
        self.used_gpus.difference_update(task.gpus)

    def _submit(self, task: Task) -> Any:
        from emofer.grid.jobs import RunJob

        args = (task.spec, task.cfg, task.run_dir, self.runner, self.threads)
        return self.executor.submit(RunJob(), *args, resume=task.resume)

    def start(self, tasks: list[Task], after: Mapping[int, str]) -> None:
        with python_path(), _own_session(self.name != "slurm"):
            if self.name == "slurm":
                self._start_slurm(tasks, after)
            else:
                for task in tasks:
                    gpus = task.gpus if self.name == "local-gpus" else self.gpus
                    self.executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)
                    task.job = self._submit(task)
        for task in tasks:
            record_job(task.run_dir, self.name, task.job.job_id, self.jobs_dir / task.job.job_id, gpus=task.gpus)

    def attach(self, task: Task, job: Mapping[str, Any]) -> bool:
        if not super().attach(task, job):
            return False
        task.gpus = [g for g in job.get("gpus") or [] if g in self.gpus] if self.name == "local-gpus" else []
        self.used_gpus.update(task.gpus)
        self.running.add(task.index)
        return True

    def _start_slurm(self, tasks: list[Task], after: Mapping[int, str]) -> None:
        free = [t for t in tasks if t.index not in after]
        if free:
            with self.executor.batch():  # one job array
                submitted = [self._submit(t) for t in free]
            for task, job in zip(free, submitted, strict=True):
                task.job = job
        extra = dict(self.base.get("additional_parameters") or {})
        for task in (t for t in tasks if t.index in after):
            self.executor.update_parameters(
                dependency=f"afterok:{after[task.index]}",
                additional_parameters={"kill-on-invalid-dep": "yes", **extra},
            )
            try:
                task.job = self._submit(task)
            finally:
                self.executor.update_parameters(dependency=None, additional_parameters=extra or None)

    def stop(self, tasks: list[Task]) -> None:
        if self.name == "slurm":  # cluster jobs go on; the next `emofer grid` follows them again
            return
        super().stop(tasks)

    def poll(self) -> None:
        if self.name == "slurm":
            import submitit

            submitit.SlurmJob.watcher.update()

    def ended(self, task: Task) -> bool:
        if self.name == "slurm" and not isinstance(task.job, _RecordedJob):
            return task.job.watcher.is_done(task.job.job_id, mode="cache")
        return task.job.done()


@contextlib.contextmanager
def _own_session(own: bool) -> Iterator[None]:
    """Local jobs' controllers start in a session of their own: a Ctrl-C on the terminal reaches the
    grid alone, which stops its jobs itself (:meth:`Launcher.stop`), with no traceback of theirs."""
    if not own or os.name != "posix":
        yield
        return
    popen = subprocess.Popen
    subprocess.Popen = functools.partial(popen, start_new_session=True)  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


def _interrupt_job(pid: int) -> None:
    """SIGINT to the tasks of submitit's local controller ``pid`` (a task ignores SIGTERM: submitit
    bypasses it), which end their training; the controller then ends by itself."""
    if pid == os.getpid():  # a run this process ran (a recorded `local` job): nothing to signal
        return
    children = Path(f"/proc/{pid}/task/{pid}/children")
    tasks = [int(c) for c in children.read_text().split()] if children.exists() else []
    for task in tasks or [pid]:
        with contextlib.suppress(OSError):
            os.kill(task, signal.SIGINT)


def _wait_ended(jobs: list[Any], timeout_s: float = 30.0) -> None:
    """Waits until the jobs have ended, then kills what is left (with its session's processes)."""
    deadline = time.time() + timeout_s
    while any(not j.done() for j in jobs) and time.time() < deadline:
        time.sleep(0.1)
    for job in jobs:
        pid = int(job.job_id)
        with contextlib.suppress(OSError):  # only a controller that leads its own session (never ours)
            if not job.done() and os.getpgid(pid) == pid and pid != os.getpgrp():
                os.killpg(pid, signal.SIGKILL)
        proc = getattr(job, "_process", None)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)


def slurm_parameters(section: Mapping[str, Any], grid_name: str) -> dict[str, Any]:
    """submitit's ``SlurmExecutor`` parameters for a grid's ``launcher:`` section (one task per GPU)."""
    gpus = int(section.get("gpus_per_node") or 0)
    params: dict[str, Any] = {
        "job_name": grid_name,
        "nodes": int(section.get("nodes", 1)),
        "ntasks_per_node": max(1, gpus),
        "time": int(section.get("timeout_min", 60)),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "cpus_per_task", "account", "qos", "constraint", "setup", "array_parallelism"):
        if section.get(key) is not None:
            params[key] = section[key]
    if section.get("mem_gb") is not None:
        params["mem"] = f"{int(section['mem_gb'])}GB"
    if section.get("slurm_additional_parameters"):
        params["additional_parameters"] = dict(section["slurm_additional_parameters"])
    return params


def slurm_shape(cfg: DictConfig, section: Mapping[str, Any]) -> DictConfig:
    """The run's ``train.devices``/``train.num_nodes`` set to the job's GPUs per node and nodes.

    A run that asks for other numbers (other than the defaults, 1, or ``auto``) is an error naming both.
    """
    gpus, nodes = int(section.get("gpus_per_node") or 0), int(section.get("nodes", 1))
    if not gpus:
        return cfg
    devices = cfg.train.devices
    if devices not in ("auto", -1, "-1", 1, "1", gpus, str(gpus)):
        raise ConfigError(
            f"run {cfg.name} asks for train.devices={devices} but the launcher gives gpus_per_node={gpus}"
        )
    if int(cfg.train.num_nodes) not in (1, nodes):
        raise ConfigError(f"run {cfg.name} asks for train.num_nodes={cfg.train.num_nodes} but the launcher gives nodes={nodes}")
    cfg.train.devices, cfg.train.num_nodes = gpus, nodes
    return cfg


def make_launcher(section: Mapping[str, Any], out: Path, jobs: int, runner: Runner, grid_name: str) -> Launcher:
    """The launcher a grid's ``launcher:`` section names (``local`` with ``jobs: 1`` runs in this process)."""
    if section["name"] == "local" and jobs == 1:
        return Launcher(runner)
    return SubmititLauncher(section, out, jobs, runner, grid_name)
