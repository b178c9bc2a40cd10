"""FERV39k: multi-scene clips, 7 classes, one train/test split, stored as frame folders."""

from __future__ import annotations

import os

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

FERV39K_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
"""The class order of MAE-DFER and DFER-CLIP (file labels Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear)."""


@DATASETS.register("ferv39k")
class FERV39k(RecordDataset):
    """FERV39k clips of all scenes, read as frame folders.

    Args:
        root: the FERV39k folder.
        split: ``train`` or ``test``.
        list_dir: folder of the split lists.
        train_file: ``Scene/Emotion/id Label`` lines, no header.
        test_file: the test list.
        frame_dir: folder the clip paths are relative to.
        on_bad_sample: ``error`` or ``skip`` (malformed lines, unknown labels).
    """

    video = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        list_dir: str = "4_setups/All_scenes",
        train_file: str = "train_All.csv",
        test_file: str = "test_All.csv",
        frame_dir: str = "2_ClipsforFaceCrop",
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("ferv39k", "split", split, ("train", "test"))
        base = require_root(root, "ferv39k")
        path = require_file(
            resolve(resolve(base, list_dir), train_file if split == "train" else test_file),
            "FERV39k split list",
            f"{split}_file",
        )
        frames = resolve(base, frame_dir)
        skips = SkipLog(f"ferv39k {split}", on_bad_sample)
        records = [
            Record(id=name, media=FrameFolder(str(frames / name)), label=label, source=where(path, line))
            for line, name, label in read_name_label_lines(path, FERV39K_CLASSES, skips)
        ]
        super().__init__(records, FERV39K_CLASSES, f"ferv39k-{split}", skips)
