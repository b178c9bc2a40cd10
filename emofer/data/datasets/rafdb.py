"""RAF-DB (basic expressions): 7 classes, aligned 100x100 faces, split by file-name prefix."""

from __future__ import annotations

import os
from pathlib import Path

from emofer.data import DATASETS
from emofer.data.base import (
    Record,
    RecordDataset,
    check_choice,
    one_based_label,
    read_lines,
    require_file,
    require_root,
    resolve,
    where,
)
from emofer.data.errors import AnnotationError, SkipLog

RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""RAF-DB's class order (1-based in the label file)."""


@DATASETS.register("rafdb")
class RAFDB(RecordDataset):
    """RAF-DB basic expressions (7 classes) read from the folder as distributed.

    Args:
        root: the RAF-DB ``basic`` folder.
        split: ``train`` or ``test`` (the file-name prefix).
        label_file: ``name label`` lines, labels 1-7 (surprise, fear, disgust,
            happiness, sadness, anger, neutral).
        image_dir: folder of the images.
        image_suffix: inserted before the extension (``train_00001_aligned.jpg``);
            use ``""`` with ``image_dir="Image/original"``.
        on_bad_sample: ``error`` or ``skip`` (malformed lines, unknown labels).

    Example:
        >>> test = DATASETS.build({"name": "rafdb", "root": "/data/RAF-DB/basic", "split": "test"})  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        label_file: str = "EmoLabel/list_patition_label.txt",
        image_dir: str = "Image/aligned",
        image_suffix: str = "_aligned",
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("rafdb", "split", split, ("train", "test"), " (RAF-DB has no validation split)")
        base = require_root(root, "rafdb")
        labels = require_file(resolve(base, label_file), "RAF-DB label file", "label_file")
        images = resolve(base, image_dir)
        skips = SkipLog(f"rafdb {split}", on_bad_sample)
        records = []
        for line, text in read_lines(labels):
            parts = text.split()
            if len(parts) != 2:
                skips.bad(AnnotationError(labels, line, f"expected 'name label', got {text!r}"))
                continue
            name, token = parts
            if not name.startswith(("train", "test")):
                skips.bad(AnnotationError(labels, line, f"file name {name!r} starts with neither train nor test"))
                continue
            if not name.startswith(split):
                continue
            label = one_based_label(token, RAFDB_CLASSES, labels, line, skips)
            if label is not None:
                stem, ext = Path(name).stem, Path(name).suffix or ".jpg"
                records.append(
                    Record(
                        id=stem, media=str(images / f"{stem}{image_suffix}{ext}"), label=label, source=where(labels, line)
                    )
                )
        super().__init__(records, RAFDB_CLASSES, f"rafdb-{split}", skips)
