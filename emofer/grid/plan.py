"""``emofer grid --dry-run``: what a grid would run, how its runs differ, and whether each one builds.

Nothing trains and nothing is written. Every run's resolved config is built
with ``torch.device("meta")`` (parameters without storage, so a 7B model
builds in seconds): a misspelt component argument, a wrong dimension, a part
that does not wire to its neighbour fails here, naming the run, and not when
that run starts hours into the grid. Pretrained LLM weights are not read:
``from_pretrained`` builds the architecture from the checkpoint's config
instead (the folder and its config must exist), and a named built-in LLM
(``tiny-llama``) is created first, as training would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from omegaconf import DictConfig, OmegaConf

from emofer.grid.fingerprint import changed_files, fingerprint
from emofer.grid.folder import DONE, FAILED, PENDING, config_hash, read_status
from emofer.grid.launchers import slurm_shape
from emofer.grid.run import _configure, _resolve, check_ids
from emofer.grid.spec import Grid

_IGNORED = ("name",)
_UNSET = object()


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def differences(cfgs: Sequence[DictConfig]) -> list[dict[str, Any]]:
    """Per config, its values of the dotted keys whose resolved values are not the same in all of them
    (of a component whose ``name`` differs, only the name; keys a config does not have are left out)."""
    flat = [_flat(OmegaConf.to_container(c, resolve=True)) for c in cfgs]
    keys = sorted({k for f in flat for k in f} - set(_IGNORED))
    varied = [k for k in keys if len({repr(f.get(k, _UNSET)) for f in flat}) > 1]
    # a component whose name differs stands for all its arguments
    swapped = {k[: -len(".name")] for k in varied if k.endswith(".name")}
    shown = [k for k in varied if not any(k.startswith(p + ".") and k != p + ".name" for p in swapped)]
    return [{k: f[k] for k in shown if k in f} for f in flat]


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """``torch.device("meta")``, with a causal LM's ``from_pretrained`` building from the checkpoint's
    config (transformers refuses to load weights onto the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    def from_config(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        options = {k: kwargs[k] for k in ("local_files_only", "trust_remote_code", "revision") if k in kwargs}
        config = AutoConfig.from_pretrained(path, **options)
        extra = {k: kwargs[k] for k in ("attn_implementation", "trust_remote_code") if k in kwargs}
        return AutoModelForCausalLM.from_config(config, **extra)

    with mock.patch.object(AutoModelForCausalLM, "from_pretrained", from_config), torch.device("meta"):
        yield


def check_builds(cfg: DictConfig) -> None:
    """Builds the run's model on the meta device; raises what building raises."""
    from emofer.llm.loading import resolve_path
    from emofer.model import build_model

    cfg = cfg.copy()
    llm = cfg.model.llm
    if llm.get("path"):  # a named built-in LLM is created (with real tensors) before the meta build
        llm.path = resolve_path(str(llm.path))
    with meta_device():
        build_model(cfg)


def _action(run_dir: Path, cfg: DictConfig, code: dict[str, str], again: str | None, retry_failed: bool) -> str:
    status = read_status(run_dir)
    state = status["status"]
    if state == PENDING:
        return "run"
    if status.get("config_hash") != config_hash(cfg):
        return "run again: its config changed"
    if again:
        return f"run again: {again}"
    changed = changed_files(status.get("code"), code)
    if changed and state in (DONE, FAILED):
        return f"run again: code changed ({', '.join(changed)})"
    if state == DONE:
        return "skip: done"
    if state == FAILED:
        return "run again: failed (--retry-failed)" if retry_failed else "skip: failed (--retry-failed reruns it)"
    return f"follow or restart: {state}"


def plan_grid(
    grid: Grid | str | os.PathLike[str],
    out: str | os.PathLike[str],
    launcher: str | None = None,
    only: Sequence[str] | None = None,
    rerun: Sequence[str] = (),
    force: bool = False,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """What ``run_grid`` with these arguments would do, every run's config built on the meta device.

    Returns:
        One row per selected run: ``run``, ``action`` (``run``, ``skip: done``, ``run again: …``),
        ``differences`` (its values of the keys that differ between the grid's runs; a face prior
        that the grid pretrains is not pretrained here) and ``error`` (why its config does not
        resolve or its model does not build; None when it builds).
    """
    grid, section = _resolve(grid, launcher)
    out = Path(out)
    check_ids(grid, {"--only": only or [], "--rerun": rerun})
    slurm = section["name"] == "slurm"
    rows, cfgs = [], []
    for spec in grid.runs:
        row: dict[str, Any] = {"run": spec.id, "action": "run", "differences": {}, "error": None}
        try:
            cfg = _configure(spec, grid.name, out, [lambda c: slurm_shape(c, section) if slurm else c])
            code = fingerprint(cfg)
        except Exception as err:
            row.update(action="fail", error=f"{type(err).__name__}: {err}")
            rows.append(row)
            continue
        again = "--force" if force else "--rerun" if spec.id in rerun else None
        row["action"] = _action(out / "runs" / spec.id, cfg, code, again, retry_failed)
        rows.append(row)
        cfgs.append((row, cfg))
    for (row, _), diff in zip(cfgs, differences([c for _, c in cfgs]), strict=True):
        row["differences"] = diff
    from_base = {spec.id for spec in grid.runs if spec.from_base}
    for row, _ in cfgs:  # its base model does not exist before the grid pretrains it
        if row["run"] in from_base:
            row["differences"]["train.init_from"] = "base-model (stage 0, pretrained first; init_missing=keep)"
    selected = [(row, cfg) for row, cfg in cfgs if only is None or row["run"] in only]
    for row, cfg in selected:
        try:
            check_builds(cfg)
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
    return [row for row in rows if only is None or row["run"] in only]
