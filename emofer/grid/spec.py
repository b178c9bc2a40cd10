"""A grid file parsed: its runs (expanded from ``grid:`` and ``runs:``), pretraining stage and launcher."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.config import ConfigError, load_config, merge_raw

BASE_MODEL = "base-model"
"""The ``init_from`` of a run that starts from the grid's pretrained base model (``pretrain: base_model:``)."""


@dataclass
class RunSpec:
    """One run of a grid: an id, where its config starts, and what it changes.

    Attributes:
        id: the run's id (a folder name).
        base: preset name, config path or inline config mapping.
        overrides: nested overrides merged over ``base``.
        varied: the values that distinguish this run (shown as result columns).
        init_from: id of the run whose trained model this run starts from.
        from_base: the run starts from the grid's pretrained base model (``init_from: base-model``).
    """

    id: str
    base: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    varied: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    from_base: bool = False

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
    launcher: dict[str, Any] = field(default_factory=lambda: {"name": "local"})

    @classmethod
    def load(cls, path_or_mapping: str | os.PathLike[str] | Mapping[str, Any], root: Path | None = None) -> Grid:
        """Reads a grid YAML file (or an already-parsed mapping) and expands it.

        ``root``: the folder a mapping's relative config paths resolve from (a file's: its folder).
        """
        if isinstance(path_or_mapping, Mapping):
            raw = dict(path_or_mapping)
            jobs = _jobs(raw)
            runs = expand(raw, root=root)
            return cls(str(raw.get("name", "grid")), runs, _pretrain(raw), jobs, launcher_section(raw))
        path = Path(path_or_mapping)
        if not path.exists():
            raise ConfigError(f"grid file {str(path)!r} does not exist")
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            if not isinstance(raw, dict):
                raise ConfigError("a grid file must be a mapping" + (" (this one is empty)" if not raw else ""))
            jobs = _jobs(raw)
            runs = expand(raw, root=path.parent)
            return cls(str(raw.get("name", path.stem)), runs, _pretrain(raw), jobs, launcher_section(raw))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        except Exception as err:  # YAML syntax, interpolation
            raise ConfigError(f"{path}: not a readable grid file ({' '.join(str(err).split())})") from None


def _jobs(raw: Mapping[str, Any]) -> int:
    jobs = raw.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(
            f"'jobs:' is the number of runs that execute at once (an integer >= 1), got {jobs!r}"
        )
    return jobs


LAUNCHERS = ("local", "local-gpus", "slurm", "submitit-local")
"""The executors a grid's runs can be handed to (``launcher:`` in the grid file, ``--launcher``)."""

LAUNCHER_KEYS = {
    "local": {"name"},
    "local-gpus": {"name", "gpus", "timeout_min"},
    "submitit-local": {"name", "gpus", "timeout_min"},
    "slurm": {
        "name", "partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "account",
        "qos", "constraint", "max_num_timeout", "array_parallelism", "slurm_additional_parameters", "setup",
        "poll_s",
    },
}
"""The keys each launcher's section may hold (see docs/grids.md)."""


def launcher_section(raw: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The grid's ``launcher:`` section as a mapping with ``name`` (``launcher: slurm`` is ``{name: slurm}``).

    ``name`` (``--launcher``) replaces the section's name and keeps its other keys.
    """
    section = raw.get("launcher") or {}
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, Mapping):
        raise ConfigError(f"'launcher:' is a launcher name or a mapping with 'name:', got {section!r}")
    section = {"name": "local", **section}
    if name is not None:
        section["name"] = name
    if section["name"] not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {section['name']!r}; valid: {', '.join(LAUNCHERS)}")
    # a --launcher that replaces the file's launcher ignores the keys only the file's launcher takes
    allowed = set().union(*LAUNCHER_KEYS.values()) if name else LAUNCHER_KEYS[section["name"]]
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(
            f"launcher {section['name']!r} does not take {sorted(unknown)}; valid: {sorted(LAUNCHER_KEYS[section['name']])}"
        )
    return dict(section)


def _pretrain(raw: Mapping[str, Any]) -> dict[str, Any]:
    stages = raw.get("pretrain") or {}
    if not isinstance(stages, Mapping) or set(stages) - {"face_prior", "base_model"}:
        raise ConfigError(
            "'pretrain:' may hold 'face_prior:' (the arguments of emofer.pretrain.pretrain_face_prior) and "
            "'base_model:' ({preset, overrides}, see emofer.base_model.pretrain_base_model)"
        )
    base = stages.get("base_model")
    if base is not None:
        if not isinstance(base, Mapping) or set(base) - {"preset", "overrides", "cache_dir"}:
            raise ConfigError("'pretrain: base_model:' takes preset, overrides and cache_dir")
        overrides = _overrides(base.get("overrides"), "pretrain.base_model")
        stages = {**stages, "base_model": {**base, "overrides": overrides}}
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
    valid = ("name", "base", "overrides", "grid", "runs", "pretrain", "jobs", "launcher", "suite")
    unknown = set(raw) - set(valid)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {sorted(unknown)}; valid: {', '.join(valid)}")
    base = _resolve_base(raw.get("base"), root)
    common = _overrides(raw.get("overrides"), "overrides")
    axes = raw.get("grid") or {}
    if not isinstance(axes, Mapping) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError("'grid:' maps dotted config keys to non-empty lists of values")
    if not axes and not raw.get("runs") and raw.get("suite") is None:
        raise ConfigError(
            f"the grid names no runs (grid: {raw.get('grid')!r}, runs: {raw.get('runs')!r}); "
            "give 'grid:' axes of values or a 'runs:' list"
        )
    suite_points: list[tuple[list[str], dict[str, Any], dict[str, Any]]] = [([], {}, {})]
    if raw.get("suite") is not None:  # one run per (data set, fold) of an evaluation suite
        from emofer.suite import grid_points

        suite_points = grid_points(raw["suite"], root)
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
        from_base = source == BASE_MODEL
        if from_base:
            if "base_model" not in (raw.get("pretrain") or {}):
                raise ConfigError(f"runs[{n}]: init_from {BASE_MODEL!r} needs a 'pretrain: base_model:' stage")
            source = None
        if source is not None and source not in entry_ids:
            raise ConfigError(
                f"runs[{n}]: init_from {source!r} is not the id of an earlier run (earlier: {entry_ids})"
            )
        entry_ids.append(run_id)
        point_ids.append([])
        points = itertools.product(suite_points, itertools.product(*axes.values()))
        for p, ((suite_tokens, suite_over, suite_varied), point) in enumerate(points):
            varied = dict(zip(axes.keys(), point, strict=True))
            tokens = ([_token("id", str(run_id))] if run_id else []) + suite_tokens + [
                _token(k, v) for k, v in varied.items()
            ]
            rid = "+".join(tokens) or (base if isinstance(base, str) else "run")
            rid = Path(rid).stem if rid.endswith((".yaml", ".yml")) else rid
            overrides = merge_raw(merge_raw(merge_raw(common, run_over), suite_over), nest(varied))
            parent = point_ids[entry_ids.index(source)][p] if source is not None else None
            point_ids[-1].append(rid)
            runs.append(
                RunSpec(
                    rid, run_base, overrides, varied={**suite_varied, **varied}, init_from=parent, from_base=from_base
                )
            )
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.id] = seen.get(run.id, 0) + 1
    dupes = sorted(k for k, v in seen.items() if v > 1)
    if dupes:
        raise ConfigError(f"grid run ids are not unique: {dupes}; give the runs explicit 'id:'s")
    return runs
