"""Detecting a checkpoint's format and building an emofer model from it (:func:`from_checkpoint`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from emofer.checkpoints.base import CheckpointError, CheckpointFormat, load_mapped, map_state, read_config
from emofer.checkpoints.source import attach
from emofer.model import EmoFERModel, build_model

log = logging.getLogger(__name__)

__all__ = ["detect_format", "from_checkpoint"]


def _formats() -> dict[str, CheckpointFormat]:
    from emofer.checkpoints import CHECKPOINT_FORMATS

    return {name: CHECKPOINT_FORMATS.get(name)() for name in CHECKPOINT_FORMATS.names()}


def detect_format(path: str | os.PathLike[str], format: str | None = None) -> CheckpointFormat:
    """The format of the checkpoint at ``path``: the one named, or the only one whose detector accepts it.

    Raises:
        CheckpointError: no format accepts it (the message says what the folder holds), or
            several do (the message names them and what each found; pass ``format=``).
    """
    from emofer.checkpoints import CHECKPOINT_FORMATS

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if format is not None:
        fmt = CHECKPOINT_FORMATS.get(format)()
        found = fmt.detect(path)
        if found is None:
            raise CheckpointError(
                f"{path} is not a {format!r} checkpoint as far as its detector can tell ({_what_is_there(path)})"
            )
        log.info("%s: %s", path, found)
        return fmt
    hits = {name: found for name, fmt in _formats().items() if (found := fmt.detect(path)) is not None}
    if not hits:
        raise CheckpointError(
            f"no checkpoint format recognises {path} ({_what_is_there(path)}); known formats: "
            f"{', '.join(CHECKPOINT_FORMATS.names())}"
        )
    if len(hits) > 1:
        listed = "; ".join(f"{name}: {found}" for name, found in hits.items())
        raise CheckpointError(
            f"{path} fits several checkpoint formats ({listed}); name one with format=... (--format)"
        )
    name, found = next(iter(hits.items()))
    log.info("%s is a %r checkpoint: %s", path, name, found)
    return CHECKPOINT_FORMATS.get(name)()


def _what_is_there(path: Path) -> str:
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    config = read_config(path)
    names = sorted(p.name for p in path.iterdir())[:12]
    if config:
        fields = {k: config[k] for k in ("model_type", "architectures") if k in config}
        return f"config.json says {fields}; files {names}"
    return f"no config.json; files {names}"


def from_checkpoint(
    path: str | os.PathLike[str],
    vision: str | os.PathLike[str] | None = None,
    cfg: str | os.PathLike[str] | DictConfig | dict[str, Any] | None = None,
    format: str | None = None,
) -> EmoFERModel:
    """Builds an :class:`~emofer.model.EmoFERModel` holding another project's checkpoint.

    Args:
        path: the checkpoint folder (or file).
        vision: the vision tower, for formats that keep it apart (LLaVA-1.5's CLIP folder).
        cfg: a preset name, YAML file or config whose other parts are kept (e.g.
            ``"emo-llama-7b"``): the checkpoint fills the parts it has, the rest stay at
            initialisation and are logged; None builds the checkpoint's own model.
        format: a registered format name; detected when None (never guessed: an
            ambiguous folder is an error naming the candidates).

    Returns:
        The model, in train mode like :func:`~emofer.model.build_model`'s; its
        ``import_report`` attribute is the :class:`~emofer.checkpoints.base.MappedState`
        (what was filled, dropped and kept at initialisation), its ``checkpoint_source``
        the :class:`~emofer.checkpoints.source.CheckpointSource` that lets ``save_pretrained``
        write only what differs from the checkpoint.

    Raises:
        CheckpointError: unknown format, a missing vision tower, or keys that do not fit (named).
    """
    from emofer.config import load_config

    path = Path(path)
    fmt = detect_format(path, format)
    vision_path = None if vision is None else Path(vision)
    if fmt.needs_vision and vision_path is None:
        raise CheckpointError(
            f"a {fmt.name!r} checkpoint keeps its vision tower apart; pass vision=... (--vision) "
            f"with the tower's folder or file"
        )
    base = None if cfg is None else (cfg if isinstance(cfg, DictConfig) else load_config(cfg))
    exp_cfg = fmt.build_config(path, vision_path, base)
    model = build_model(exp_cfg)
    source = fmt.source_state(path, vision_path)
    mapped = map_state(source, fmt.rules(model.cfg), model, fmt.fills(model.cfg), origin=str(path))
    load_mapped(model, mapped)
    attach(model, fmt, path, vision_path, mapped, kept=mapped.kept)
    log.info("imported %s (%s): %s", path, fmt.name, mapped.summary())
    if mapped.kept:
        log.warning("kept at initialisation (not in %s): %s", path, ", ".join(mapped.kept))
    model.import_report = mapped
    return model
