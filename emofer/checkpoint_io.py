"""Lightning checkpoints written atomically in the run folder, the previous one kept, a corrupt one named.

Lightning's own writer stages a checkpoint in a temporary location and moves
it; across file systems that is a copy, and a full disk or a kill during it
leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to
the target and renames, after keeping the checkpoint it replaces as
``<name>.prev`` (a hard link, so there is always a complete ``last.ckpt``).
:func:`resume_checkpoint` picks the newest readable one at ``--resume``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from emofer.safe_io import UnsafeFileError, load_checkpoint

log = logging.getLogger(__name__)

PREVIOUS = ".prev"
"""Suffix of the checkpoint kept from before the last save (``last.ckpt.prev``)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes beside the target, fsyncs and renames, keeping the previous file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            keep = path.with_name(f".{path.name}{PREVIOUS}.{os.getpid()}.tmp")
            keep.unlink(missing_ok=True)
            os.link(path, keep)
            os.replace(keep, path.with_name(path.name + PREVIOUS))
        os.replace(tmp, path)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + PREVIOUS).unlink(missing_ok=True)


def clean_debris(folder: str | os.PathLike[str]) -> None:
    """Removes the temporary files an interrupted checkpoint write left in ``folder``."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", tmp)


def resume_checkpoint(last: str | os.PathLike[str]) -> Path | None:
    """The checkpoint to resume from: ``last`` if it reads, else the kept previous one; None if neither exists.

    Raises:
        UnsafeFileError: every checkpoint there is corrupt or unsafe (each named).
    """
    last = Path(last)
    clean_debris(last.parent)
    problems = []
    for path in (last, last.with_name(last.name + PREVIOUS)):
        if not path.exists():
            continue
        if path.is_dir():  # a sharded checkpoint (FSDP, DeepSpeed): its strategy reads and checks it
            return path
        try:
            load_checkpoint(path)
        except UnsafeFileError as err:
            log.warning("cannot resume from %s", err)
            problems.append(str(err))
            continue
        if problems:
            log.warning("resuming from the previous checkpoint %s instead", path)
        return path
    if problems:
        raise UnsafeFileError("; ".join(problems) + " — no readable checkpoint to resume from")
    return None


class RNGStates(Callback):
    """Puts the RNG states (Python, NumPy, torch CPU and CUDA) into every checkpoint and restores them
    at resume, so dropout and augmentation after a resume draw what the uninterrupted run drew."""

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        states: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": (kind, keys.tolist(), pos, has_gauss, cached),  # plain data: loads with weights_only
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
