"""AffectNet (manually annotated part): 7 or 8 expression classes with face boxes and 68 landmarks."""

from __future__ import annotations

import logging
import os

import numpy as np

from emofer.data import DATASETS
from emofer.data.base import (
    Record,
    RecordDataset,
    check_choice,
    read_csv,
    require_file,
    require_root,
    resolve,
    where,
)
from emofer.data.errors import AnnotationError, DataError, SkipLog

log = logging.getLogger(__name__)

AFFECTNET_CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
"""Expression codes 0-7; codes 8 (none), 9 (uncertain) and 10 (no face) are not expressions."""

_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression")
_NOT_EXPRESSION = {8: "none", 9: "uncertain", 10: "no-face"}


@DATASETS.register("affectnet")
class AffectNet(RecordDataset):
    """AffectNet's manually annotated images, 7-class (no contempt) or 8-class protocol.

    Args:
        root: the AffectNet folder.
        split: ``train`` (``training.csv``) or ``test`` / ``val`` (both
            ``validation.csv``, the set papers report on).
        protocol: 7 (drops contempt) or 8 classes; codes 8-10 are always dropped.
        train_file: training list.
        val_file: validation list.
        image_dir: folder that ``subDirectory_filePath`` is relative to.
        on_bad_sample: ``error`` or ``skip`` (malformed rows, out-of-range codes).

    Rows with a negative face width or height are skipped and counted.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        protocol: int = 8,
        train_file: str = "Manually_Annotated_file_lists/training.csv",
        val_file: str = "Manually_Annotated_file_lists/validation.csv",
        image_dir: str = "Manually_Annotated_Images",
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("affectnet", "split", split, ("train", "val", "test"))
        check_choice("affectnet", "protocol", protocol, (7, 8), " (classes)")
        base = require_root(root, "affectnet")
        arg = "train_file" if split == "train" else "val_file"
        path = require_file(resolve(base, train_file if split == "train" else val_file), "AffectNet list", arg)
        images = resolve(base, image_dir)
        skips = SkipLog(f"affectnet {split}", on_bad_sample)
        records, dropped, negative = [], 0, 0
        rows = read_csv(path)
        first, header = next(rows, (1, None))
        if header is None:
            raise DataError(f"{path}: empty file")
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise AnnotationError(path, first, f"header lacks column(s) {missing}; got {header}")
        col = {name: header.index(name) for name in _COLUMNS}
        for line, row in rows:
            if len(row) != len(header):
                skips.bad(AnnotationError(path, line, f"expected {len(header)} fields, got {len(row)}"))
                continue
            try:
                code = int(row[col["expression"]])
                box = tuple(int(float(row[col[k]])) for k in ("face_x", "face_y", "face_width", "face_height"))
            except (ValueError, OverflowError):
                skips.bad(AnnotationError(path, line, "expression and face box must be finite numbers"))
                continue
            if not 0 <= code <= 10:
                skips.bad(AnnotationError(path, line, f"expression code {code} is outside 0..10"))
                continue
            if code in _NOT_EXPRESSION or code >= protocol:
                dropped += 1
                continue
            if box[2] < 0 or box[3] < 0:
                negative += 1
                continue
            try:
                landmarks = _landmarks(row[col["facial_landmarks"]])
            except ValueError as err:
                skips.bad(AnnotationError(path, line, f"facial_landmarks must be 136 finite numbers separated by ';' ({err})"))
                continue
            rel = row[col["subDirectory_filePath"]]
            records.append(Record(id=rel, media=str(images / rel), label=code, box=box, landmarks=landmarks,  # type: ignore[arg-type]
                                  source=where(path, line)))
        if negative:
            log.info("affectnet %s: skipped %d row(s) with a negative face width or height", split, negative)
        log.debug("affectnet %s: dropped %d row(s) outside the %d-class protocol", split, dropped, protocol)
        self.negative_box_rows = negative
        self.dropped_rows = dropped
        super().__init__(records, AFFECTNET_CLASSES[:protocol], f"affectnet{protocol}-{split}", skips)


def _landmarks(text: str) -> np.ndarray | None:
    """136 ';'-separated floats to ``[68,2]``; None when empty; ValueError when malformed."""
    text = text.strip()
    if not text:
        return None
    values = np.array([float(v) for v in text.split(";") if v.strip()], dtype=np.float32)
    if values.size != 136:
        raise ValueError(f"{values.size} values")
    if not np.isfinite(values).all():
        raise ValueError(f"{int((~np.isfinite(values)).sum())} of them NaN or infinite")
    return values.reshape(68, 2)
