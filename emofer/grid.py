"""Ablation grids: many runs from one YAML, resumable, each in its own folder.

A grid file has a ``base`` (a preset name, a config path or an inline
config), optional ``overrides`` applied to every run, and ``grid`` (dotted
keys to lists of values; their cartesian product) and/or ``runs`` (an
explicit list of ``{id, preset, overrides, init_from}``). When both are
given, every explicit run is crossed with every grid point. ``init_from:
<id of an earlier run>`` starts a run from that run's trained model (its
``model/`` folder, as ``train.init_from``) at the same grid point: it waits
for that run, reruns when that run reruns, and fails when it fails (e.g. a
video model fine-tuned from the image model). An optional
``pretrain: {face_prior: {...}}`` pretrains a face prior first (see
:func:`emofer.pretrain.pretrain_face_prior`, cached) and hands its weights
to every run whose ``model.face_prior`` is that prior.

.. code-block:: yaml

    name: agr-and-lr
    base: emo-llama-tiny
    overrides: {train.max_steps: 200}
    grid:
      model.prompt.agr: [true, false]
      train.lr: [1.0e-3, 3.0e-4]
    runs:
      - {id: fim}
      - {id: no-fim, preset: emo-llama-tiny-no-fim}

Run ids join the varied values with ``+``: string values as they are (a
component's ``name`` for a component), other values as ``key=value`` with the
last part of the key (``fim+agr=true+lr=0.001``).

Each run writes into ``OUT/runs/<id>/`` (resolved ``config.yaml``,
``status.json``, ``metrics.json``, ``predictions.jsonl``, ``model/``,
``checkpoints/``); the grid writes ``results.csv``, ``results.md`` and PNG
charts into ``OUT``. Re-running a grid skips finished runs (whose config is
unchanged), restarts interrupted ones from scratch (so the results equal an
uninterrupted grid), and skips failed ones unless ``retry_failed`` is set.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.config import ConfigError, atomic_write_text, load_config, merge_raw, save_config, to_yaml
from emofer.paths import MODEL_DIR
from emofer.report import RunResult

log = logging.getLogger(__name__)

DONE, FAILED, RUNNING, PENDING = "done", "failed", "running", "pending"
_WAIT = "wait"

Runner = Callable[[DictConfig, Path], Mapping[str, Any]]
"""Runs one experiment config in a folder and returns its metrics (see :func:`emofer.experiment.run`)."""


@dataclass
class RunSpec:
    """One run of a grid: an id, where its config starts, and what it changes.

    Attributes:
        id: the run's id (a folder name).
        base: preset name, config path or inline config mapping.
        overrides: nested overrides merged over ``base``.
        varied: the values that distinguish this run (shown as result columns).
        init_from: id of the run whose trained model this run starts from.
    """

    id: str
    base: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    varied: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None

    def config(self) -> DictConfig:
        """The run's resolved, validated experiment config."""
        if isinstance(self.base, dict):
            raw = merge_raw(self.base, self.overrides)
        else:
            raw = merge_raw({"extends": str(self.base)}, self.overrides)
        cfg = load_config(raw)
        cfg.name = self.id
        return cfg


@dataclass
class Grid:
    """A parsed grid file: a name, its expanded runs and an optional pretraining stage."""

    name: str
    runs: list[RunSpec]
    pretrain: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1

    @classmethod
    def load(cls, path_or_mapping: str | os.PathLike[str] | Mapping[str, Any]) -> Grid:
        """Reads a grid YAML file (or an already-parsed mapping) and expands it."""
        if isinstance(path_or_mapping, Mapping):
            raw = dict(path_or_mapping)
            return cls(str(raw.get("name", "grid")), expand(raw), _pretrain(raw), _jobs(raw))
        path = Path(path_or_mapping)
        if not path.exists():
            raise ConfigError(f"grid file {str(path)!r} does not exist")
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a grid file must be a mapping")
        return cls(str(raw.get("name", path.stem)), expand(raw, root=path.parent), _pretrain(raw), _jobs(raw))


def _jobs(raw: Mapping[str, Any]) -> int:
    jobs = raw.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(
            f"'jobs:' is the number of runs that execute at once (an integer >= 1), got {jobs!r}"
        )
    return jobs


def _pretrain(raw: Mapping[str, Any]) -> dict[str, Any]:
    stages = raw.get("pretrain") or {}
    if not isinstance(stages, Mapping) or set(stages) - {"face_prior"}:
        raise ConfigError(
            "'pretrain:' may hold 'face_prior:' (the arguments of emofer.pretrain.pretrain_face_prior)"
        )
    return dict(stages)


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` to ``{"a": {"b": 1}}`` (nested mappings are nested further)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = str(key).split(".")
        node: dict[str, Any] = {}
        leaf = node
        for part in parts[:-1]:
            leaf[part] = {}
            leaf = leaf[part]
        leaf[parts[-1]] = nest(value) if isinstance(value, Mapping) else value
        out = merge_raw(out, node)
    return out


def _overrides(value: Any, where: str) -> dict[str, Any]:
    """Overrides given as a dotted mapping or a list of ``key=value`` strings, nested."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return nest(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        try:
            return OmegaConf.to_container(OmegaConf.from_dotlist(value))  # type: ignore[return-value]
        except Exception as err:
            raise ConfigError(f"{where}: malformed override in {value}: {err}") from None
    raise ConfigError(f"{where}: overrides must be a mapping of dotted keys or a list of 'key=value' strings")


def _token(key: str, value: Any) -> str:
    """The piece of a run id that stands for one varied value."""
    if isinstance(value, Mapping) and "name" in value:
        text = str(value["name"])
    elif isinstance(value, str):
        text = value
    else:
        text = f"{key.rsplit('.', 1)[-1]}={json.dumps(value) if isinstance(value, (list, dict)) else value}"
        text = text.replace("True", "true").replace("False", "false")
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def _resolve_base(base: Any, root: Path | None) -> str | dict[str, Any]:
    if isinstance(base, Mapping):
        return dict(base)
    if not isinstance(base, str) or not base:
        raise ConfigError("a grid needs 'base:' (a preset name, a config path or an inline config)")
    if root is not None and (root / base).exists():
        return str(root / base)
    return base


def expand(raw: Mapping[str, Any], root: Path | None = None) -> list[RunSpec]:
    """The runs of a grid mapping (see the module docstring for the format).

    Args:
        raw: the parsed grid file.
        root: folder that relative config paths in it are relative to.
    """
    unknown = set(raw) - {"name", "base", "overrides", "grid", "runs", "pretrain", "jobs"}
    if unknown:
        raise ConfigError(
            f"unknown grid key(s) {sorted(unknown)}; valid: name, base, overrides, grid, runs, pretrain, jobs"
        )
    base = _resolve_base(raw.get("base"), root)
    common = _overrides(raw.get("overrides"), "overrides")
    axes = raw.get("grid") or {}
    if not isinstance(axes, Mapping) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError("'grid:' maps dotted config keys to non-empty lists of values")
    explicit = raw.get("runs") or [{}]
    if not isinstance(explicit, list):
        raise ConfigError("'runs:' is a list of {id, preset, overrides}")
    runs: list[RunSpec] = []
    entry_ids: list[Any] = []  # each entry's id, and its runs' ids per grid point
    point_ids: list[list[str]] = []
    for n, entry in enumerate(explicit):
        if not isinstance(entry, Mapping) or set(entry) - {"id", "preset", "overrides", "init_from"}:
            raise ConfigError(
                f"runs[{n}]: expected a mapping with keys id, preset, overrides, init_from; got {entry!r}"
            )
        run_base = _resolve_base(entry["preset"], root) if entry.get("preset") else base
        run_over = _overrides(entry.get("overrides"), f"runs[{n}]")
        run_id = entry.get("id") or (entry.get("preset") if entry.get("preset") else None)
        if run_id is None and entry.get("overrides"):
            over = entry["overrides"]
            pairs = over.items() if isinstance(over, Mapping) else (s.split("=", 1) for s in over)
            run_id = "+".join(_token(k, v) for k, v in pairs)
        source = entry.get("init_from")
        if source is not None and source not in entry_ids:
            raise ConfigError(
                f"runs[{n}]: init_from {source!r} is not the id of an earlier run (earlier: {entry_ids})"
            )
        entry_ids.append(run_id)
        point_ids.append([])
        for p, point in enumerate(itertools.product(*axes.values())):
            varied = dict(zip(axes.keys(), point, strict=True))
            tokens = ([_token("id", str(run_id))] if run_id else []) + [
                _token(k, v) for k, v in varied.items()
            ]
            rid = "+".join(tokens) or (base if isinstance(base, str) else "run")
            rid = Path(rid).stem if rid.endswith((".yaml", ".yml")) else rid
            overrides = merge_raw(merge_raw(common, run_over), nest(varied))
            parent = point_ids[entry_ids.index(source)][p] if source is not None else None
            point_ids[-1].append(rid)
            runs.append(RunSpec(id=rid, base=run_base, overrides=overrides, varied=varied, init_from=parent))
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.id] = seen.get(run.id, 0) + 1
    dupes = sorted(k for k, v in seen.items() if v > 1)
    if dupes:
        raise ConfigError(f"grid run ids are not unique: {dupes}; give the runs explicit 'id:'s")
    return runs


def config_hash(cfg: DictConfig) -> str:
    """A short hash of a resolved config (what decides whether a finished run is still valid)."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``status.json`` (``{"status": "pending"}`` when there is none)."""
    path = run_dir / "status.json"
    if not path.exists():
        return {"status": PENDING}
    return json.loads(path.read_text())


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "status.json", json.dumps(status, indent=2, sort_keys=True) + "\n")


@contextmanager
def _grid_lock(out: Path) -> Iterator[None]:
    """Holds ``OUT/.grid.lock`` so two grids never run in one folder at once."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".grid.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another grid is running in {out} (it holds {out / '.grid.lock'})") from None
        yield


def run_grid(
    grid: Grid | str | os.PathLike[str],
    out: str | os.PathLike[str],
    retry_failed: bool = False,
    runner: Runner | None = None,
    prepare: Callable[[DictConfig], DictConfig] | None = None,
    on_run_start: Callable[[RunSpec, int, int], None] | None = None,
    jobs: int | None = None,
    on_run_end: Callable[[RunResult, int, int], None] | None = None,
) -> list[RunResult]:
    """Runs every run of a grid that is not finished yet and writes the grid's results.

    With one job, runs execute one after the other in this process (a run
    whose Lightning strategy uses several processes has them launched by
    Lightning). With ``jobs > 1``, that many runs execute at once, each in its
    own worker process with ``cpu_count // jobs`` torch threads (tiny models
    use a CPU core poorly through intra-op threads, so on a CPU separate runs
    keep the cores busier). Workers die with the grid process, so a killed
    grid leaves no orphan writing into its folder.

    Args:
        grid: a :class:`Grid` or the path of a grid YAML file.
        out: the grid's output folder.
        retry_failed: rerun runs recorded as failed (otherwise they are reported and skipped).
        runner: runs one config in a folder and returns its metrics; default
            :func:`emofer.experiment.run` (with ``jobs > 1`` it must be picklable:
            a module-level function).
        prepare: a last edit of each run's resolved config (e.g. to point at a
            pretrained checkpoint) before it is saved and run.
        on_run_start: called with ``(run, index, total)`` before each run that executes
            (with ``jobs > 1``: when it is handed to the worker pool).
        jobs: runs at once (default: the grid's ``jobs:``, else 1).
        on_run_end: called with ``(result, index, total)`` after each run that executed.

    Returns:
        One :class:`RunResult` per run, in grid order.
    """
    from emofer.report import write_results

    if not isinstance(grid, Grid):
        grid = Grid.load(grid)
    if runner is None:
        from emofer.experiment import run as runner
    jobs = grid.jobs if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out = Path(out)
    results: dict[int, RunResult] = {}

    def record(index: int, result: RunResult, executed: bool = False) -> None:
        results[index] = result
        write_results([results[i] for i in sorted(results)], out, charts=False)
        if executed and on_run_end is not None:
            on_run_end(result, index, len(grid.runs))

    with _grid_lock(out):
        for stale in out.glob(".*.tmp"):  # left by a write that a kill interrupted
            stale.unlink()
        pretrained = _pretrained_prior(grid)
        todo: list[tuple[int, RunSpec, DictConfig, Path]] = []
        executing: set[str] = set()
        for index, spec in enumerate(grid.runs):
            run_dir = out / "runs" / spec.id
            try:
                cfg = spec.config()
                if spec.init_from is not None:
                    cfg.train.init_from = str((out / "runs" / spec.init_from / MODEL_DIR).resolve())
                if pretrained is not None:
                    cfg = pretrained(cfg)
                if prepare is not None:
                    cfg = prepare(cfg)
            except Exception as err:  # a run with a broken config is recorded, the grid goes on
                record(index, _failed(run_dir, spec, err, 0.0, None))
                continue
            # a run started from another run's model reruns whenever that run does
            earlier = None if spec.init_from in executing else _finished_earlier(spec, cfg, run_dir, retry_failed)
            if earlier is not None:
                record(index, earlier)
            else:
                todo.append((index, spec, cfg, run_dir))
                executing.add(spec.id)
        position = {spec.id: i for i, spec in enumerate(grid.runs)}

        def source_state(spec: RunSpec) -> str | None:
            """None when the run can start, ``_WAIT`` while its init_from run is unfinished, else why it cannot."""
            if spec.init_from is None:
                return None
            source = results.get(position[spec.init_from])
            if source is None:
                return _WAIT
            if source.status == DONE:
                return None
            return f"its init_from run {spec.init_from!r} did not finish ({source.status}: {source.error})"

        if jobs == 1 or len(todo) <= 1:
            for index, spec, cfg, run_dir in todo:
                state = source_state(spec)  # sources come earlier, so they have ended here
                if state is not None:
                    record(index, _failed(run_dir, spec, RuntimeError(state), 0.0, config_hash(cfg)), True)
                    continue
                if on_run_start is not None:
                    on_run_start(spec, index, len(grid.runs))
                record(index, _execute(spec, cfg, run_dir, runner), executed=True)
        else:
            _execute_parallel(todo, runner, jobs, len(grid.runs), on_run_start, record, source_state)
        write_results([results[i] for i in sorted(results)], out, charts=True)
    return [results[i] for i in sorted(results)]


def _die_with_parent() -> None:  # pragma: no cover - runs in the worker processes
    """Worker initializer: a SIGKILL of the grid also ends its workers (Linux)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the grid died before prctl took effect
        os._exit(1)


def _worker_execute(
    spec: RunSpec, cfg: DictConfig, run_dir: Path, runner: Runner, threads: int
) -> RunResult:  # pragma: no cover - runs in the worker processes (tested through run_grid)
    import sys

    import torch

    # the run's output goes to OUT/logs/<id>.log (progress bars of several runs would interleave)
    log_file = run_dir.parent.parent / "logs" / f"{spec.id}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as handle:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    torch.set_num_threads(threads)
    return _execute(spec, cfg, run_dir, runner)


def _execute_parallel(
    todo: list[tuple[int, RunSpec, DictConfig, Path]],
    runner: Runner,
    jobs: int,
    total: int,
    on_run_start: Callable[[RunSpec, int, int], None] | None,
    record: Callable[..., None],
    source_state: Callable[[RunSpec], str | None],
) -> None:
    """Runs ``todo`` in ``jobs`` worker processes; each result is recorded as it finishes.

    Runs are handed to the pool in grid order; one with an ``init_from``
    run is handed over once that run has finished (or recorded as failed
    when that run failed).
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    pending = list(todo)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_die_with_parent) as pool:
        futures: dict[Any, tuple[int, RunSpec, Path]] = {}
        while pending or futures:
            changed = True
            while changed:  # a recorded failure may settle the runs that wait on it
                changed = False
                for item in list(pending):
                    index, spec, cfg, run_dir = item
                    state = source_state(spec)
                    if state == _WAIT:
                        continue
                    pending.remove(item)
                    if state is not None:
                        failure = _failed(run_dir, spec, RuntimeError(state), 0.0, config_hash(cfg))
                        record(index, failure, executed=True)
                        changed = True
                        continue
                    if on_run_start is not None:
                        on_run_start(spec, index, total)
                    future = pool.submit(_worker_execute, spec, cfg, run_dir, runner, threads)
                    futures[future] = (index, spec, run_dir)
            if not futures:
                break  # unreachable: a waiting run's source is earlier, so it ran or is running
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                index, spec, run_dir = futures.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # the worker itself died (e.g. killed for memory)
                    result = _failed(run_dir, spec, err, 0.0, None)
                record(index, result, executed=True)


def _pretrained_prior(grid: Grid) -> Callable[[DictConfig], DictConfig] | None:
    """Runs the grid's face-prior pretraining (or finds it cached); returns what hands it to runs."""
    if "face_prior" not in grid.pretrain:
        return None
    from emofer.pretrain import pretrain_face_prior, use_pretrained_prior

    recipe = dict(grid.pretrain["face_prior"])
    weights = pretrain_face_prior(**recipe)
    return lambda cfg: use_pretrained_prior(cfg, recipe["prior"], weights)


def _failed(
    run_dir: Path, spec: RunSpec, err: BaseException, seconds: float, digest: str | None
) -> RunResult:
    """Records a failed run (error and traceback in its ``status.json``)."""
    log.error("run %s failed: %s", spec.id, err)
    message = f"{type(err).__name__}: {err}"
    status = {"status": FAILED, "error": message, "traceback": traceback.format_exc(), "seconds": seconds}
    _write_status(run_dir, {**status, "config_hash": digest})
    return RunResult(spec.id, FAILED, seconds=seconds, varied=spec.varied, error=message)


def _finished_earlier(spec: RunSpec, cfg: DictConfig, run_dir: Path, retry_failed: bool) -> RunResult | None:
    """The recorded result of a run that need not run again, or None."""
    status = read_status(run_dir)
    same = status.get("config_hash") == config_hash(cfg)
    if status["status"] == DONE and same and (run_dir / "metrics.json").exists():
        log.info("run %s: finished earlier, skipped", spec.id)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return RunResult(spec.id, DONE, status.get("seconds"), metrics, spec.varied, skipped=True)
    if status["status"] == FAILED and same and not retry_failed:
        log.info("run %s: failed earlier (%s); --retry-failed reruns it", spec.id, status.get("error"))
        return RunResult(spec.id, FAILED, status.get("seconds"), {}, spec.varied, status.get("error"), True)
    if status["status"] == RUNNING:
        log.warning("run %s was interrupted; restarting it from scratch", spec.id)
    elif status["status"] != PENDING and not same:
        log.warning("run %s: its config changed since it ran; running it again", spec.id)
    return None


def _execute(spec: RunSpec, cfg: DictConfig, run_dir: Path, runner: Runner) -> RunResult:
    """Runs one run in a clean folder and records its outcome."""
    digest = config_hash(cfg)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    _write_status(run_dir, {"status": RUNNING, "config_hash": digest, "started": time.time()})
    start = time.perf_counter()
    try:
        metrics = dict(runner(cfg, run_dir))
    except Exception as err:  # recorded with its traceback; the grid goes on
        return _failed(run_dir, spec, err, time.perf_counter() - start, digest)
    seconds = time.perf_counter() - start
    if not (run_dir / "metrics.json").exists():
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _write_status(run_dir, {"status": DONE, "config_hash": digest, "seconds": seconds})
    return RunResult(spec.id, DONE, seconds, metrics, spec.varied)
