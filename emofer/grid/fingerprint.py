"""The code a run uses, fingerprinted: what tells a grid that a finished run's result is stale.

A run's fingerprint maps the source file of every registered part its
model names (encoder, face prior, fusion, LLM head: ``inspect.getsourcefile``
of ``REGISTRY.get(name)``) and of every ``custom_imports`` module (a plugin)
to the SHA-256 of that file's text. The grid records it in the run's
``status.json`` and, when a finished run's recorded fingerprint differs from
the current code, warns naming the run and the changed files and runs it
again (docs/grids.md, "Resuming, failures").
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

_PARTS = ("encoder", "face_prior", "fusion", "llm")


def _registries() -> dict[str, Any]:
    from emofer.encoders import ENCODERS, FACE_PRIORS
    from emofer.fusion import FUSIONS
    from emofer.llm import LLM_HEADS

    return {"encoder": ENCODERS, "face_prior": FACE_PRIORS, "fusion": FUSIONS, "llm": LLM_HEADS}


def _label(path: Path) -> str:
    """A file's name in a fingerprint: relative to emofer's parent for emofer's own files, else absolute."""
    import emofer

    root = Path(emofer.__file__).resolve().parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def code_files(cfg: DictConfig) -> list[Path]:
    """The source files of the parts a run's model uses and of its ``custom_imports`` modules."""
    files: list[Path] = []
    model = cfg.get("model") or {}
    registries = _registries()
    for part in _PARTS:
        node = model.get(part)
        name = node.get("name") if hasattr(node, "get") else None
        if not name or name not in registries[part]:
            continue
        source = inspect.getsourcefile(registries[part].get(str(name)))
        if source:
            files.append(Path(source).resolve())
    for module in cfg.get("custom_imports") or []:
        source = getattr(importlib.import_module(str(module)), "__file__", None)
        if source:
            files.append(Path(source).resolve())
    return sorted(set(files))


def fingerprint(cfg: DictConfig) -> dict[str, str]:
    """``{file: sha256 of its text}`` for :func:`code_files` of the run (16 hex digits each)."""
    return {_label(p): hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in code_files(cfg) if p.exists()}


def changed_files(recorded: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """The files whose code differs between a recorded fingerprint and the current one (none when
    nothing was recorded: runs of an older emofer are not rerun for that alone)."""
    if not recorded:
        return []
    return sorted(f for f in set(recorded) | set(current) if recorded.get(f) != current.get(f))
