"""Data: the ``DATASETS`` registry, data-set adapters, SynthFER, instructions, video and the DataModule.

Every public module of :mod:`emofer.data.datasets` is imported on the first
lookup of :data:`DATASETS`, so the built-in adapters register themselves;
third parties register theirs with ``@DATASETS.register("my-set")`` or an
entry point in the group ``emofer.datasets``::

    from emofer.data import DATASETS
    test = DATASETS.build({"name": "rafdb", "root": "/data/RAF-DB", "split": "test"})
    test[0]  # {"id": ..., "media": ".../test_0001_aligned.jpg", "label": 4, "classes": [...]}

:class:`EmoFERDataModule` (Lightning) is imported lazily, so ``import emofer.data``
stays light.
"""

from typing import Any

from emofer.data.errors import AnnotationError, BadSampleError, DataError
from emofer.registry import Registry

DATASETS = Registry(
    "dataset", "emofer.datasets", builtin_packages=("emofer.data.datasets",), public_name="DATASETS"
)

__all__ = [
    "DATASETS",
    "AnnotationError",
    "BadSampleError",
    "DataError",
    "EmoFERDataModule",
    "SynthFER",
]


def __getattr__(name: str) -> Any:
    if name == "EmoFERDataModule":
        from emofer.data.datamodule import EmoFERDataModule

        return EmoFERDataModule
    if name == "SynthFER":
        from emofer.data.datasets.synthfer import SynthFER

        return SynthFER
    raise AttributeError(f"module 'emofer.data' has no attribute {name!r}")
