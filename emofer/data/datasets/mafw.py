"""MAFW: multi-modal clips, 11 classes, 5-fold cross-validation, stored as mp4 files."""

from __future__ import annotations

import os
from pathlib import Path

from emofer.data import DATASETS
from emofer.data.base import (
    FrameFolder,
    Record,
    RecordDataset,
    check_choice,
    read_name_label_lines,
    require_file,
    require_root,
    resolve,
    where,
)
from emofer.data.errors import SkipLog

MAFW_CLASSES = (
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
    "contempt", "anxiety", "helplessness", "disappointment",
)  # fmt: skip
"""MAFW's eleven single-label classes, in its order."""


@DATASETS.register("mafw")
class MAFW(RecordDataset):
    """MAFW single-labelled clips of one fold, read from the mp4 files (or extracted frame folders).

    Args:
        root: the MAFW folder.
        split: ``train`` or ``test``.
        fold: 1-5.
        split_dir: folder holding ``set_{fold}/{train,test}.txt``.
        clip_dir: folder of the ``<id>.mp4`` clips.
        frame_dir: if set, read ``<frame_dir>/<id>/`` frame folders instead of the clips.
        on_bad_sample: ``error`` or ``skip`` (malformed lines, unknown or compound labels).
    """

    video = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        fold: int = 1,
        split_dir: str = "Train & Test Set/single/no_caption",
        clip_dir: str = "clips",
        frame_dir: str | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("mafw", "split", split, ("train", "test"))
        check_choice("mafw", "fold", fold, range(1, 6))
        base = require_root(root, "mafw")
        path = require_file(resolve(base, split_dir) / f"set_{fold}" / f"{split}.txt", "MAFW split list", "split_dir")
        clips = resolve(base, clip_dir)
        frames = resolve(base, frame_dir) if frame_dir else None
        skips = SkipLog(f"mafw fold {fold} {split}", on_bad_sample)
        records = []
        for line, name, label in read_name_label_lines(path, MAFW_CLASSES, skips):
            stem = Path(name).stem
            media = FrameFolder(str(frames / stem)) if frames is not None else str(clips / name)
            records.append(Record(id=stem, media=media, label=label, source=where(path, line)))
        super().__init__(records, MAFW_CLASSES, f"mafw{fold}-{split}", skips)
