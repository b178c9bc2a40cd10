"""DFEW: in-the-wild movie clips, 7 classes, 5-fold cross-validation, stored as frame folders."""

from __future__ import annotations

import os

from emofer.data import DATASETS
from emofer.data.base import (
    FrameFolder,
    Record,
    RecordDataset,
    check_choice,
    one_based_label,
    read_csv,
    require_file,
    require_root,
    resolve,
    where,
)
from emofer.data.errors import AnnotationError, SkipLog

DFEW_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
"""DFEW's class order (1-based in the split files)."""


@DATASETS.register("dfew")
class DFEW(RecordDataset):
    """DFEW single-labelled clips of one fold, read as frame folders.

    Args:
        root: the DFEW folder.
        split: ``train`` or ``test``.
        fold: 1-5.
        split_dir: folder of the split files.
        train_file: training list under ``split_dir`` (``{fold}`` is filled in).
        test_file: test list under ``split_dir``.
        frame_dir: folder of the per-clip frame folders (zero-padded 5-digit
            names; ``Clip/clip_224x224_16f`` and ``Clip/jpg_256`` are also seen).
        on_bad_sample: ``error`` or ``skip`` (malformed lines, labels outside 1-7).
    """

    video = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        fold: int = 1,
        split_dir: str = "EmoLabel_DataSplit",
        train_file: str = "train(single-labeled)/set_{fold}.csv",
        test_file: str = "test(single-labeled)/set_{fold}.csv",
        frame_dir: str = "Clip/clip_224x224",
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("dfew", "split", split, ("train", "test"))
        check_choice("dfew", "fold", fold, range(1, 6))
        base = require_root(root, "dfew")
        pattern = train_file if split == "train" else test_file
        path = require_file(
            resolve(resolve(base, split_dir), pattern.format(fold=fold)), "DFEW split file", f"{split}_file"
        )
        frames = resolve(base, frame_dir)
        skips = SkipLog(f"dfew fold {fold} {split}", on_bad_sample)
        records = []
        rows = read_csv(path)
        first, header = next(rows, (1, None))
        if not header or [h.strip() for h in header[:2]] != ["video_name", "label"]:
            raise AnnotationError(path, first, f"expected header 'video_name,label', got {header}")
        for line, row in rows:
            if len(row) < 2 or not row[0].strip().isdigit():
                skips.bad(AnnotationError(path, line, f"expected 'video_name,label' with an integer name, got {row}"))
                continue
            label = one_based_label(row[1].strip(), DFEW_CLASSES, path, line, skips)
            if label is not None:
                name = f"{int(row[0]):05d}"
                records.append(
                    Record(id=name, media=FrameFolder(str(frames / name)), label=label, source=where(path, line))
                )
        super().__init__(records, DFEW_CLASSES, f"dfew{fold}-{split}", skips)
