"""What a model folder carries and what it only references, so that a copied folder loads elsewhere.

``save_pretrained`` runs :func:`carry_sources` over the files and folders a
part's config names (``model.face_prior.checkpoint``, ``model.llm.path``, ...):

- a weights *file* of a part whose weights all go into ``model.safetensors``
  (a pretrained face prior, say) is no longer needed: the saved config sets
  the key to null;
- a source the part still reads at load (the frozen base LLM under LoRA, the
  tokenizer and ``config.json`` of an LLM folder) is copied into the folder's
  ``sources/`` when it lies in emofer's cache (``$EMOFER_CACHE``) or is small
  (under :data:`SMALL_BYTES`); the saved config names the copy, relative to
  the folder;
- a larger source elsewhere (a 13 GB base LLM) stays where it is: the folder
  records its path and each file's size and fingerprint (the
  :mod:`emofer.checkpoints.source` fingerprint), checked at load.

``sources.json`` lists every such key and what was done with it;
:func:`resolve_sources` applies it when ``from_pretrained`` reads the config,
and fails with one message naming the missing source, the config key and how
to point it at a copy.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from emofer.checkpoints.base import CheckpointError
from emofer.checkpoints.source import fingerprint, mismatch

SOURCES_FILE, CARRIED_DIR = "sources.json", "sources"
SMALL_BYTES = 200 * 2**20
"""Sources up to this size (bytes) are copied into the model folder; larger ones are referenced."""
PART_NODES = ("encoder", "face_prior", "llm")


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def _within(path: Path, roots: Iterable[str | None]) -> bool:
    return any(root is not None and path.is_relative_to(Path(root).resolve()) for root in roots)


def _path_args(node: Any) -> list[tuple[str, Path]]:
    """The top-level string arguments of a part's config that name an existing file or folder."""
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        if key != "name" and isinstance(value, str) and value and os.path.exists(value):
            out.append((key, Path(value).resolve()))
    return out


def _copy(src: Path, dst: Path) -> None:
    if dst.exists() and dst.resolve() == src:
        return  # saving over the folder it was loaded from
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _record(path: Path) -> list[dict[str, Any]]:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [{**fingerprint(f), "path": "" if f == path else f.relative_to(path).as_posix()} for f in files]


def carry_sources(
    model: nn.Module, directory: Path, cfg: dict[str, Any], whole: Iterable[str], cache: Path
) -> dict[str, Any]:
    """Copies or records what ``cfg``'s parts read from disk; rewrites ``cfg`` (a plain model config) in place.

    Args:
        model: the model being saved.
        directory: the folder being written.
        cfg: the model config as a plain dict; its path arguments are rewritten.
        whole: the parts whose every weight ``model.safetensors`` holds.
        cache: emofer's cache folder (sources in it are always copied).

    Returns:
        The ``sources.json`` record (also written, or removed when empty).
    """
    imported = getattr(model, "checkpoint_source", None)  # re-read through checkpoint.json already
    roots = [] if imported is None else [imported.path, imported.vision]
    whole, entries, copied = set(whole), [], {}
    for part in PART_NODES:
        for key, path in _path_args(cfg.get(part)):
            if _within(path, roots):
                continue
            entry: dict[str, Any] = {"key": f"model.{part}.{key}", "source": str(path)}
            if path.is_file() and part in whole:
                cfg[part][key] = None
                entry["kept"] = "inside"  # its weights are in model.safetensors
            elif _within(path, [str(cache)]) or _size(path) <= SMALL_BYTES:
                if path not in copied:
                    copied[path] = f"{CARRIED_DIR}/{part}.{key}{path.suffix if path.is_file() else ''}"
                    _copy(path, directory / copied[path])
                cfg[part][key] = entry["kept"] = copied[path]
            else:
                entry.update(kept="referenced", files=_record(path))
            entries.append(entry)
    record = {"sources": entries}
    file = directory / SOURCES_FILE
    if entries:
        file.write_text(json.dumps(record, indent=2) + "\n")
    else:
        file.unlink(missing_ok=True)
    return record


def resolve_sources(cfg: DictConfig, directory: str | os.PathLike[str]) -> DictConfig:
    """``cfg`` (a model folder's config) with its copied sources inside ``directory`` and its references checked.

    Raises:
        CheckpointError: a referenced source is gone or changed, naming it, its config key and the remedy.
    """
    directory = Path(directory)
    file = directory / SOURCES_FILE
    if not file.is_file():
        return cfg
    for entry in json.loads(file.read_text())["sources"]:
        kept = entry["kept"]
        if kept == "inside":
            continue
        if kept != "referenced":
            OmegaConf.update(cfg, entry["key"], str(directory / kept))
            continue
        where = Path(str(OmegaConf.select(cfg, entry["key"])))
        size = sum(f["size"] for f in entry["files"]) / 2**20
        saved = "" if str(where) == entry["source"] else f", saved from {entry['source']}"
        how = f"{directory} reads {entry['key']} = {where} ({size:.0f} MB{saved}), which it does not carry"
        fix = f"copy it to this machine and set {entry['key']} in {directory / 'config.yaml'} to where it is"
        for record in entry["files"]:
            target = where / record["path"] if record["path"] else where
            if not target.is_file():
                raise CheckpointError(f"{how}, and {target} is missing: {fix}")
            problem = mismatch(target, record)
            if problem:
                raise CheckpointError(f"{how}, and {target} changed since the model was saved ({problem}): {fix}")
    return cfg


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def needed_imports(cfg: Any, imports: Iterable[str]) -> list[str]:
    """The ``custom_imports`` a model config needs: those that define a part it uses.

    A part's source is the module that registered it (:meth:`emofer.registry.Registry.source`);
    parts of emofer and of installed plugins (entry points) need no import. An import is kept
    when it is, or contains, the module of such a part; if a part's module matches none of
    ``imports``, all of them are kept (the link cannot be told).
    """
    from emofer.encoders import ENCODERS, FACE_PRIORS
    from emofer.fusion import FUSIONS
    from emofer.llm import LLM_HEADS
    from emofer.llm.loading import NAMED_LLMS

    imports = list(imports)
    if not imports:
        return []
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    modules = {
        registry.source(value)
        for value in set(_strings(node))
        for registry in (ENCODERS, FACE_PRIORS, FUSIONS, LLM_HEADS, NAMED_LLMS)
        if value in registry
    }
    modules = {m for m in modules if m != "emofer" and not m.startswith("plugin ")}
    kept = [i for i in imports if any(m == i or m.startswith(i + ".") for m in modules)]
    if any(not any(m == i or m.startswith(i + ".") for i in imports) for m in modules):
        return imports
    return kept
