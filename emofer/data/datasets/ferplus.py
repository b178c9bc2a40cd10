"""FERPlus: FER2013's 48x48 grey faces relabelled by ten annotators, 8 classes by majority vote."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emofer.data import DATASETS
from emofer.data.base import (
    Record,
    RecordDataset,
    check_choice,
    open_text,
    require_file,
    require_root,
    resolve,
)
from emofer.data.errors import AnnotationError, DataError, SkipLog

log = logging.getLogger(__name__)

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
"""FERPlus's class order; the vote columns add ``unknown`` and ``NF`` (not a face)."""

_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def majority_vote(votes: list[float]) -> int | None:
    """microsoft/FERPlus's majority rule over the ten vote counts.

    Every emotion with a single vote is zeroed (outlier removal); the top
    count wins if it is more than half of the remaining votes, otherwise the
    face is ``unknown``. Returns the class index (0-7), or None for unknown
    and not-a-face.
    """
    kept = [v if v > 1 else 0.0 for v in votes]
    top = max(kept)
    if top <= 0.5 * sum(kept):
        return None
    idx = kept.index(top)
    return idx if idx < len(FERPLUS_CLASSES) else None


@DATASETS.register("ferplus")
class FERPlus(RecordDataset):
    """FERPlus (8 classes, majority vote), images from the PNG folders or decoded from ``fer2013.csv``.

    Args:
        root: folder holding ``fer2013.csv`` / ``fer2013new.csv`` (and the PNG folders, if generated).
        split: ``train`` (Training), ``val`` (PublicTest) or ``test`` (PrivateTest).
        labels: ``fer2013new`` (the released ``fer2013new.csv``) or ``legacy`` (the older
            per-folder ``label.csv`` files whose counts papers cite).
        images: ``auto`` (the PNG folder when it exists, else ``fer2013.csv``), ``folders`` or ``csv``.
        fer2013_file: FER2013's ``emotion,pixels,Usage`` file.
        ferplus_file: the vote file, same row order as ``fer2013_file``.
        train_dir: PNG folder of the training split.
        val_dir: PNG folder of the validation split.
        test_dir: PNG folder of the test split.
        legacy_label_file: name of the per-folder label file for ``labels="legacy"``.
        on_bad_sample: ``error`` or ``skip`` (malformed rows).

    Rows with an empty image name are skipped (173 in the release) and faces
    voted ``unknown`` or not-a-face are dropped.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        labels: str = "fer2013new",
        images: str = "auto",
        fer2013_file: str = "fer2013.csv",
        ferplus_file: str = "fer2013new.csv",
        train_dir: str = "FER2013Train",
        val_dir: str = "FER2013Valid",
        test_dir: str = "FER2013Test",
        legacy_label_file: str = "label.csv",
        on_bad_sample: str = "error",
    ) -> None:
        check_choice("ferplus", "split", split, _USAGE)
        check_choice("ferplus", "labels", labels, ("fer2013new", "legacy"))
        check_choice("ferplus", "images", images, ("auto", "folders", "csv"))
        base = require_root(root, "ferplus")
        folder = resolve(base, {"train": train_dir, "val": val_dir, "test": test_dir}[split])
        skips = SkipLog(f"ferplus {split}", on_bad_sample)
        if labels == "legacy":
            label_path = require_file(folder / legacy_label_file, "FERPlus legacy label file", "legacy_label_file")
            rows = self._legacy(label_path, skips)
        else:
            label_path = require_file(resolve(base, ferplus_file), "FERPlus vote file", "ferplus_file")
            rows = self._votes(label_path, _USAGE[split], skips)
        use_folder = images == "folders" or (images == "auto" and folder.is_dir())
        if images == "folders" and not folder.is_dir():
            raise DataError(f"FERPlus image folder not found: {folder} (pass {split}_dir=... or images='csv')")
        self._pixels: np.ndarray | None = None
        self._source: Path | None = None
        if not use_folder:
            self._source = require_file(resolve(base, fer2013_file), "FER2013 pixel file", "fer2013_file")
            pixels, bad = _read_pixels(self._source, [r for _, r, _ in rows], _USAGE[split], skips)
            keep = [i for i, (_, r, _) in enumerate(rows) if r not in bad]
            self._pixels, rows = pixels[keep], [rows[i] for i in keep]
        records = [
            Record(id=Path(name).stem, media=str(folder / name) if use_folder else None, label=label)
            for name, _, label in rows
        ]
        self._rows = [r for _, r, _ in rows]
        super().__init__(records, FERPLUS_CLASSES, f"ferplus-{split}", skips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        out = self.sample(self.records[index])
        if self._pixels is not None:
            out["media"] = f"{self._source}#row={self._rows[index]}"
            out["image"] = Image.fromarray(self._pixels[index].reshape(48, 48), "L").convert("RGB")
        return out

    @staticmethod
    def _votes(path: Path, usage: str, skips: SkipLog) -> list[tuple[str, int, int]]:
        """(image name, fer2013 row, label) of one split from ``fer2013new.csv``."""
        rows, empty = [], 0
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[:2] != ["Usage", "Image name"] or len(header) != 12:
                raise AnnotationError(path, 1, f"expected 'Usage,Image name' and 10 vote columns, got {header}")
            for row_index, row in enumerate(reader):
                line = reader.line_num
                if len(row) != 12:
                    skips.bad(AnnotationError(path, line, f"expected 12 fields, got {len(row)}"))
                elif row[0] == usage and not row[1].strip():
                    empty += 1
                elif row[0] == usage:
                    rows.append((line, row[1].strip(), row_index, row[2:]))
        out, dropped = _majority_labels(path, rows, skips)
        log.info("ferplus %s: %d row(s) without an image name skipped, %d unknown/not-a-face dropped",
                 usage, empty, dropped)
        return out

    @staticmethod
    def _legacy(path: Path, skips: SkipLog) -> list[tuple[str, int, int]]:
        """(image name, fer2013 row, label) from a per-folder ``name,box,votes...`` file."""
        rows = []
        with open_text(path) as f:
            reader = csv.reader(f)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                name = row[0].strip()
                if len(row) != 12 or not name.startswith("fer") or not name[3:].split(".")[0].isdigit():
                    skips.bad(AnnotationError(path, line, "expected 'ferNNNNNNN.png,\"(box)\",' and 10 votes"))
                    continue
                rows.append((line, name, int(name[3:].split(".")[0]), row[2:]))
        return _majority_labels(path, rows, skips)[0]


def _majority_labels(
    path: Path, rows: list[tuple[int, str, int, list[str]]], skips: SkipLog
) -> tuple[list[tuple[str, int, int]], int]:
    """(image name, fer2013 row, majority label) of each (line, name, row, votes) row, and how many were dropped.

    Rows with malformed votes are recorded in ``skips``; rows voted unknown or
    not-a-face are dropped and counted.
    """
    out, dropped = [], 0
    for line, name, row_index, fields in rows:
        try:
            label = _vote_row(path, line, fields)
        except AnnotationError as err:
            skips.bad(err)
            continue
        if label is None:
            dropped += 1
        else:
            out.append((name, row_index, label))
    return out, dropped


def _vote_row(path: Path, line: int, fields: list[str]) -> int | None:
    """The majority label of a row's ten vote counts (None: unknown or not a face)."""
    try:
        votes = [float(v) for v in fields]
    except ValueError:
        raise AnnotationError(path, line, "vote counts must be numbers") from None
    if not all(math.isfinite(v) for v in votes):
        raise AnnotationError(path, line, f"vote counts must be finite numbers, got {fields}")
    if any(v < 0 for v in votes):
        raise AnnotationError(path, line, "vote counts must not be negative")
    return majority_vote(votes)


def _read_pixels(path: Path, rows: list[int], usage: str, skips: SkipLog) -> tuple[np.ndarray, set[int]]:
    """Rows ``rows`` of ``fer2013.csv`` as ``uint8 [N, 2304]``, and the rows whose pixels were bad.

    A Usage that disagrees with the vote file is always an error: the two
    files would be out of step and every label wrong.
    """
    want = {r: i for i, r in enumerate(rows)}
    out = np.zeros((len(rows), 2304), dtype=np.uint8)
    found, bad = 0, set()
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "pixels" not in header or "Usage" not in header:
            raise AnnotationError(path, 1, f"expected columns emotion,pixels,Usage, got {header}")
        pix, use = header.index("pixels"), header.index("Usage")
        for row_index, row in enumerate(reader):
            if row_index not in want:
                continue
            found += 1
            line = reader.line_num
            if len(row) != len(header):
                skips.bad(AnnotationError(path, line, f"expected {len(header)} fields, got {len(row)}"))
                bad.add(row_index)
                continue
            if row[use] != usage:
                raise AnnotationError(
                    path, line, f"Usage is {row[use]!r} where the vote file says {usage!r}: "
                    "the two files are not in the same row order"
                )
            values = np.fromstring(row[pix], dtype=np.int64, sep=" ")
            if values.size != 2304 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
                skips.bad(AnnotationError(path, line, "pixels must be 2,304 values in 0..255"))
                bad.add(row_index)
                continue
            out[want[row_index]] = values
    if found != len(rows):
        raise DataError(f"{path}: has fewer rows than the vote file ({found} of {len(rows)} found)")
    return out, bad
