"""The base of the data-set adapters: records, class names, and annotation-file helpers.

An adapter parses its annotation files once into :class:`Record` objects;
``__getitem__`` turns a record into the sample dict of the data contract
(``id``, ``media``, ``label``, ``classes`` and optional ``box``,
``landmarks``, ``attributes``). Media are only opened later, by the
pipeline, so building a data set is cheap and a missing file is reported
when (and where) it is read.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from torch.utils.data import Dataset

from emofer.data.classes import canonical_classes
from emofer.data.errors import AnnotationError, DataError, SkipLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameFolder:
    """A clip stored as a folder of frame images, listed (sorted by name) when the sample is read."""

    path: str


@dataclass
class Record:
    """One annotated sample before its media are read."""

    id: str
    media: str | FrameFolder | list[str] | None
    label: int
    box: tuple[int, int, int, int] | None = None
    landmarks: np.ndarray | None = None
    attributes: dict[str, int] | None = None
    question: str | None = None
    answer: str | None = None
    source: str | None = None
    """Where the record was read: ``"file, line N"`` (named by duplicate-id and bad-box errors)."""


class RecordDataset(Dataset):
    """A data set held as a list of :class:`Record` with its class names, in its own index order.

    Args:
        records: the parsed samples.
        classes: class names in the data set's index order (mapped to canonical names).
        name: a short name for messages and ids (``"rafdb-test"``).
        skips: the skip log of parsing (``on_bad_sample: skip``), reported once here.
    """

    video: bool = False
    """Whether the samples are clips (frame folders or video files) rather than still images."""

    def __init__(
        self,
        records: list[Record],
        classes: list[str] | tuple[str, ...],
        name: str,
        skips: SkipLog | None = None,
    ) -> None:
        self.classes = canonical_classes(classes)
        self.records = unique_records(records, name, skips, self.classes)
        self.name = name
        self.skipped: list[str] = list(skips.messages) if skips is not None else []
        if skips is not None:
            skips.report()
        if not records:
            log.warning("%s: no samples", name)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(self.records[index])

    def sample(self, rec: Record) -> dict[str, Any]:
        """The sample dict of one record (the data contract)."""
        media: Any = rec.media
        if isinstance(media, FrameFolder):
            from emofer.data.media import list_frames

            media = list_frames(media.path)
        out: dict[str, Any] = {"id": rec.id, "media": media, "label": rec.label, "classes": list(self.classes)}
        for key in ("box", "landmarks", "attributes", "question", "answer", "source"):
            value = getattr(rec, key)
            if value is not None:
                out[key] = value
        return out

    def labels(self) -> list[int]:
        """Every sample's label, without reading any media (for class-balanced sampling)."""
        return [r.label for r in self.records]

    def class_counts(self) -> dict[str, int]:
        """Samples per class name."""
        counts = Counter(self.labels())
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples, classes={list(self.classes)})"


def resolve(root: str | os.PathLike[str] | None, path: str | os.PathLike[str]) -> Path:
    """``path`` under ``root`` unless it is absolute (every adapter's sub-paths go through here)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root).expanduser() / p


def require_root(root: str | os.PathLike[str], dataset: str) -> Path:
    """The data set's root folder; a clear error when it does not exist."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: root folder not found: {path}")
    return path


def require_file(path: Path, what: str, argument: str) -> Path:
    """``path`` if it is a file; otherwise an error naming it and the argument that overrides it."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (pass {argument}=... if it lives elsewhere)")
    return path


def check_choice(dataset: str, argument: str, value: Any, choices: Iterable[Any], note: str = "") -> None:
    """An adapter argument that must be one of ``choices``; else an error naming the data set, argument and value."""
    allowed = list(choices)
    if value not in allowed:
        raise ValueError(f"{dataset}: {argument} must be one of {allowed}{note}, got {value!r}")


def one_based_label(
    token: str, classes: tuple[str, ...], path: Path, line: int, skips: SkipLog
) -> int | None:
    """The class index of a 1-based label token (``"3"`` → 2); a bad token is recorded in ``skips`` (None)."""
    if token.isdigit() and 1 <= int(token) <= len(classes):
        return int(token) - 1
    skips.bad(AnnotationError(path, line, f"label {token!r} is not an integer in 1..{len(classes)}"))
    return None


def read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank row of a CSV file, header included (UTF-8, BOM or not)."""
    with open_text(path) as f:
        reader = csv.reader(f)
        for row in reader:
            if row and "".join(row).strip():
                yield reader.line_num, row


def unique_records(
    records: list[Record], name: str, skips: SkipLog | None = None, classes: tuple[str, ...] = ()
) -> list[Record]:
    """``records`` without repeated ids: a repeated sample id is an error naming both lines.

    The same id twice would be trained on twice and, in a test set, scored
    twice — and with two labels one of them is wrong. Under ``on_bad_sample:
    skip`` the later record is dropped and counted.
    """
    first: dict[str, Record] = {}
    out = []
    for rec in records:
        seen = first.setdefault(rec.id, rec)
        if seen is rec:
            out.append(rec)
            continue
        where = rec.source or name
        def word(label: int) -> str:
            return classes[label] if 0 <= label < len(classes) else str(label)

        labels = "" if seen.label == rec.label else f" with another label ({word(seen.label)} there, {word(rec.label)} here)"
        err = AnnotationError(f"{where}: sample id {rec.id!r} is listed twice{labels}; first at {seen.source or 'an earlier record'}")
        if skips is None:
            raise err
        skips.bad(err)
    return out


def where(path: Path, line: int) -> str:
    """``"path, line N"``: a record's :attr:`Record.source`."""
    return f"{path}, line {line}"


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """An annotation file opened as UTF-8 text (a BOM is dropped); a file in another encoding is an
    :class:`AnnotationError` naming it, wherever in the file the first undecodable byte is."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as err:
        raise AnnotationError(path, None, f"not a UTF-8 text file ({err.reason}); save it as UTF-8") from None


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line; tolerates a missing final newline and CRLF."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(path, None, f"not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def read_name_label_lines(
    path: Path, classes: tuple[str, ...] | list[str], skips: SkipLog
) -> Iterator[tuple[int, str, int]]:
    """``(line, name, label index)`` from ``name label`` lines whose label is an expression word.

    The word may be any spelling :func:`~emofer.data.classes.canonical_name`
    knows (``Happy``, ``angry``); it must map to one of ``classes``.
    """
    from emofer.data.classes import canonical_name

    index = {c: i for i, c in enumerate(classes)}
    for line, text in read_lines(path):
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            skips.bad(AnnotationError(path, line, f"expected 'name label', got {text!r}"))
            continue
        name, word = parts
        label = index.get(canonical_name(word) or "")
        if label is None:
            hint = " (compound labels belong to the multi-label set)" if "_" in word else ""
            skips.bad(AnnotationError(path, line, f"unknown label {word!r}{hint}; expected one of {list(classes)}"))
            continue
        yield line, name, label
