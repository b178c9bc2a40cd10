"""Importing other projects' checkpoints (LLaVA, LLaMA-VID, ...) into emofer models.

``CHECKPOINT_FORMATS`` holds one :class:`~emofer.checkpoints.base.CheckpointFormat`
per on-disk layout; every public module of this package is imported on the
first lookup, so the built-in formats register themselves. Plugins register
their own with ``@CHECKPOINT_FORMATS.register("my-format")`` or an entry point
in the group ``emofer.checkpoint_formats``. See docs/checkpoints.md.
"""

from emofer.registry import Registry

CHECKPOINT_FORMATS = Registry(
    "checkpoint format",
    "emofer.checkpoint_formats",
    builtin_packages=("emofer.checkpoints",),
    public_name="CHECKPOINT_FORMATS",
)

from emofer.checkpoints.base import (  # noqa: E402  (the registry first: formats import it)
    CheckpointError,
    CheckpointFormat,
    MappedState,
    Rule,
    map_state,
)
from emofer.checkpoints.importer import detect_format, from_checkpoint  # noqa: E402

__all__ = [
    "CHECKPOINT_FORMATS",
    "CheckpointError",
    "CheckpointFormat",
    "MappedState",
    "Rule",
    "detect_format",
    "from_checkpoint",
    "map_state",
]
