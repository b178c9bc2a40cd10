"""Files that cannot half-happen: model folders swapped in whole, and weights read with errors that name them.

- :func:`replace_folder` writes a folder as a sibling and swaps it in with one
  rename (``renameat2(RENAME_EXCHANGE)`` where the system has it, else two
  renames that :func:`recover_folder` completes after a kill), with a
  ``manifest.json`` of every file's SHA-256 that :func:`verify_manifest`
  checks at load. A kill at any point leaves the old folder or the new one,
  never a mix; the debris is cleaned by the next save or load.
- :func:`read_safetensors` and :func:`load_checkpoint` read weights and Lightning
  checkpoints without ever unpickling, and refuse a corrupt, truncated, empty
  or pickled file with an :class:`UnsafeFileError` that names it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""The file list of a folder written by :func:`replace_folder`: ``{"files": {name: {"sha256", "size"}}}``."""

_NEW, _OLD = ".new-", ".old-"


class UnsafeFileError(ValueError):
    """A weights, checkpoint or model-folder file that cannot be used as it is (named in the message)."""


def fault_point(step: str) -> None:
    """Called after every write of a folder swap: tests replace it to kill a save at each point."""


# -- model folders --------------------------------------------------------------------------------


def replace_folder(directory: str | os.PathLike[str], write: Callable[[Path], None],
                   keep: Callable[[str], bool] = lambda name: False) -> None:
    """Replaces ``directory`` as a whole by what ``write(tmp)`` writes into a fresh sibling folder.

    Args:
        directory: the folder to create or replace.
        write: fills the sibling folder (called once, with its path).
        keep: names (relative paths) that ``directory`` may hold beyond its manifest and that
            may be replaced; any other unknown file there is refused rather than deleted.

    Raises:
        UnsafeFileError: ``directory`` holds files this swap would delete that it did not write.
    """
    directory = Path(directory)
    recover_folder(directory)
    _refuse_foreign_files(directory, keep)
    tmp = directory.with_name(f".{directory.name}{_NEW}{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    fault_point("mkdir")
    write(tmp)
    fault_point("write")
    write_manifest(tmp)
    fault_point("manifest")
    if not directory.exists():
        os.rename(tmp, directory)
        fault_point("rename")
    elif _exchange(tmp, directory):
        fault_point("exchange")
        shutil.rmtree(tmp)  # now the old folder
    else:
        old = directory.with_name(f".{directory.name}{_OLD}{uuid.uuid4().hex[:8]}")
        os.rename(directory, old)
        fault_point("rename-old")
        os.rename(tmp, directory)
        fault_point("rename-new")
        shutil.rmtree(old)
    fault_point("done")


def recover_folder(directory: str | os.PathLike[str]) -> None:
    """Finishes or undoes a swap a kill interrupted, and removes its debris (``.NAME.new-*``/``.old-*``).

    When ``directory`` is missing between the two renames of a swap, the new
    folder is moved in if its manifest checks out, else the old one is put back.
    """
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    debris = sorted(directory.parent.glob(f".{directory.name}{_NEW}*")) + sorted(
        directory.parent.glob(f".{directory.name}{_OLD}*")
    )
    if not debris:
        return
    if not directory.exists():
        for candidate in debris:  # a complete new folder first, else the old one
            if candidate.name.startswith(f".{directory.name}{_OLD}") or _complete(candidate):
                os.rename(candidate, directory)
                log.warning("recovered %s from an interrupted save (%s)", directory, candidate.name)
                debris.remove(candidate)
                break
    for path in debris:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by an interrupted save", path)


def _complete(folder: Path) -> bool:
    try:
        verify_manifest(folder, required=True)
    except UnsafeFileError:
        return False
    return True


def _refuse_foreign_files(directory: Path, keep: Callable[[str], bool]) -> None:
    if not directory.is_dir():
        if directory.exists():
            raise UnsafeFileError(f"{directory} is a file, not a model folder")
        return
    listed = set(_read_manifest(directory).get("files", {})) if (directory / MANIFEST).exists() else set()
    foreign = [n for n in _files(directory) if n not in listed and n != MANIFEST and not keep(n)]
    if foreign:
        raise UnsafeFileError(
            f"{directory} holds files a save would delete ({', '.join(sorted(foreign)[:5])}); "
            "save into an empty or new folder"
        )


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one ``renameat2(RENAME_EXCHANGE)``; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    log.debug("renameat2 exchange unavailable (%s); swapping with two renames", os.strerror(ctypes.get_errno()))
    return False


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Writes ``folder/manifest.json``: every file's SHA-256 and size."""
    files = {n: {"sha256": _sha256(folder / n), "size": (folder / n).stat().st_size}
             for n in _files(folder) if n != MANIFEST}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"format": "emofer-folder", "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' mapping")
    except (ValueError, UnicodeDecodeError) as err:
        raise UnsafeFileError(f"{folder / MANIFEST}: not a readable manifest ({err})") from None
    return data


def verify_manifest(folder: str | os.PathLike[str], required: bool = False, editable: tuple[str, ...] = ()) -> None:
    """Checks every file ``folder/manifest.json`` lists against its SHA-256 and size.

    A folder without a manifest (written before manifests existed) passes
    unless ``required``. Files in ``editable`` (a model folder's ``config.yaml``,
    which its docs tell users to edit when a source moved) may differ: that is
    logged, naming the file, not refused.

    Raises:
        UnsafeFileError: a listed file is missing or differs, naming it.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        if required:
            raise UnsafeFileError(f"{folder} has no {MANIFEST}")
        return
    for name, entry in _read_manifest(folder)["files"].items():
        path = folder / name
        if not path.is_file():
            raise UnsafeFileError(f"{path} is listed in {folder / MANIFEST} but missing")
        if path.stat().st_size != entry.get("size") or _sha256(path) != entry.get("sha256"):
            if name in editable:
                log.warning("%s was edited after the save (%s lists it otherwise)", path, folder / MANIFEST)
                continue
            raise UnsafeFileError(
                f"{path} differs from {folder / MANIFEST} (changed after the save, or a mix of two saves); "
                f"restore it, or delete {MANIFEST} to load the folder as it is"
            )


# -- weights and checkpoints ----------------------------------------------------------------------


def _sniff(path: Path, what: str) -> None:
    """Refuses a missing or empty file before any reader sees it."""
    if not path.is_file():
        raise UnsafeFileError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise UnsafeFileError(f"{path} is empty (an interrupted write?)")


def _pickled(path: Path) -> bool:
    """Whether a file that failed to read as safetensors looks like a pickle or a ``torch.save`` zip."""
    with open(path, "rb") as f:
        head = f.read(4)
    return (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:4] == b"PK\x03\x04"


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a safetensors file; anything else is an :class:`UnsafeFileError` naming it."""
    from safetensors import safe_open

    path = Path(path)
    _sniff(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # SafetensorError, OSError: header too large, truncated data...
        if _pickled(path):
            raise UnsafeFileError(
                f"{path} is a Python pickle (torch.save), not a safetensors file; emofer never unpickles weights"
            ) from None
        raise UnsafeFileError(f"{path} is not a readable safetensors file (corrupt or truncated: {err})") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning/PyTorch checkpoint read with ``weights_only=True`` (tensors and plain data, nothing
    unpickled beyond that); a corrupt, truncated, empty or unsafe one is an :class:`UnsafeFileError` naming it."""
    import pickle

    import torch

    path = Path(path)
    _sniff(path, "checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeFileError(
            f"{path} is not a safe checkpoint: it holds Python objects beyond tensors and plain data, "
            "and emofer does not unpickle them"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UnsafeFileError(f"{path} is not a readable checkpoint (corrupt or truncated: {reason})") from None
