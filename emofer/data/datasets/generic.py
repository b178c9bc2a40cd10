"""Generic adapters: any CSV list of media and labels, and LLaVA-style instruction JSON."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from emofer.data import DATASETS
from emofer.data.base import FrameFolder, Record, RecordDataset, open_text, require_file, resolve, where
from emofer.data.classes import canonical_classes, canonical_name
from emofer.data.errors import AnnotationError, DataError, SkipLog
from emofer.data.instructions import read_llava_json
from emofer.data.media import IMAGE_EXTENSIONS, is_video_file
from emofer.labels import CANONICAL, FERID7


def _media(path: Path) -> str | FrameFolder:
    """An image or video file by extension; anything else is taken as a frame folder."""
    text = str(path)
    return text if text.lower().endswith(IMAGE_EXTENSIONS) or is_video_file(text) else FrameFolder(text)


@DATASETS.register("csv")
class CSVDataset(RecordDataset):
    """Any data set listed in a CSV file: a media column (image, video or frame folder) and a label column.

    Args:
        file: the CSV file (with a header row).
        root: media paths are relative to it (default: the CSV's folder).
        path_column: column of the media paths.
        label_column: column of the labels: expression words (``happy``,
            ``anger``) or integer indices into ``classes``.
        classes: class names in index order; default: the canonical names that occur, in emofer's order.
        split: keep only rows whose ``split_column`` equals this (None keeps all).
        split_column: the column holding the split name.
        id_column: column of sample ids (default: the media path).
        delimiter: the field separator.
        on_bad_sample: ``error`` or ``skip`` (malformed rows, unknown labels).

    Example:
        >>> DATASETS.build({"name": "csv", "file": "faces.csv", "classes": ["neutral", "happiness"]})  # doctest: +SKIP
    """

    def __init__(
        self,
        file: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        path_column: str = "path",
        label_column: str = "label",
        classes: list[str] | None = None,
        split: str | None = None,
        split_column: str = "split",
        id_column: str | None = None,
        delimiter: str = ",",
        on_bad_sample: str = "error",
    ) -> None:
        path = require_file(Path(file).expanduser(), "CSV list", "file")
        base = Path(root).expanduser() if root is not None else path.parent
        skips = SkipLog(f"csv {path.name}", on_bad_sample)
        rows: list[tuple[int, str, str, str]] = []
        tokens: list[str] = []
        with open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            need = [path_column, label_column] + ([split_column] if split is not None else []) + (
                [id_column] if id_column else []
            )
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise AnnotationError(path, 1, f"no column(s) {missing}; columns are {reader.fieldnames}")
            for row in reader:
                line = reader.line_num
                if None in row or any(row.get(c) is None for c in need):
                    skips.bad(AnnotationError(path, line, "wrong number of fields"))
                    continue
                tokens.append(row[label_column].strip())
                if split is not None and row[split_column] != split:
                    continue
                media = row[path_column].strip()
                if not media:
                    skips.bad(AnnotationError(path, line, f"empty {path_column!r}"))
                    continue
                rows.append((line, media, row[label_column].strip(), row[id_column] if id_column else media))
        if classes is None:  # inferred from every split, so all splits of one file share the class list
            if any(t.lstrip("-").isdigit() for t in tokens):
                raise DataError(f"{path}: integer labels need classes=[...] (names in index order)")
            seen = {canonical_name(t) for t in tokens}
            classes = [c for c in CANONICAL if c in seen]
        records = []
        index = {c: i for i, c in enumerate(canonical_classes(classes))}
        for line, media, token, sid in rows:
            if token.lstrip("-").isdigit():
                label = int(token)
                if not 0 <= label < len(index):
                    skips.bad(AnnotationError(path, line, f"label {label} is out of range 0..{len(index) - 1}"))
                    continue
            else:
                label = index.get(canonical_name(token) or "", -1)
                if label < 0:
                    skips.bad(AnnotationError(path, line, f"unknown label {token!r}; expected one of {list(index)}"))
                    continue
            records.append(Record(id=sid, media=_media(resolve(base, media)), label=label, source=where(path, line)))
        self.video = bool(records) and all(not str(r.media).lower().endswith(IMAGE_EXTENSIONS) for r in records)
        super().__init__(records, classes, f"csv-{path.stem}" + (f"-{split}" if split else ""), skips)


def llava_ids(path: Path, records: list[dict]) -> list[dict]:
    """LLaVA records with unique ids, under the LLaVA-JSON duplicate policy.

    LLaVA files ship several conversations about one picture under one id, so
    a repeated id is allowed when it names the same media with another
    question: the repeats become ``id#2``, ``id#3``... A repeated id with other
    media, or with the same question (a contradicting or doubled answer), is
    an :class:`AnnotationError` naming both records.
    """
    first: dict[str, dict] = {}
    count: dict[str, int] = {}
    out = []
    for index, rec in enumerate(records):
        rec = {**rec, "index": index}
        seen = first.setdefault(rec["id"], rec)
        if seen is not rec:
            if seen["media"] != rec["media"]:
                why = f"another media ({seen['media']!r} there, {rec['media']!r} here)"
            elif seen["question"] == rec["question"]:
                why = "the same question" + ("" if seen["answer"] == rec["answer"] else
                                            f" and another answer ({seen['answer']!r} there, {rec['answer']!r} here)")
            else:
                why = None
            if why is not None:
                raise AnnotationError(path, None, f"record {index}: id {rec['id']!r} repeats record {seen['index']} "
                                                  f"with {why}")
            count[rec["id"]] = count.get(rec["id"], 1) + 1
            rec["id"] = f"{rec['id']}#{count[rec['id']]}"
        out.append(rec)
    return out


@DATASETS.register("llava-json")
class LLaVAJSON(RecordDataset):
    """Instruction records in the LLaVA convention (``image``/``video`` key, ``<image>`` placeholder).

    Each record keeps its own question and answer. ``label`` is the answer's
    class when the answer is one expression word of ``classes``, else -1
    (a free-form conversational answer).

    Args:
        file: the JSON list of records.
        root: media paths are relative to it (default: the file's folder).
        classes: the candidate classes the records answer with.
    """

    def __init__(
        self,
        file: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        classes: list[str] | None = None,
    ) -> None:
        path = Path(file).expanduser()
        base = Path(root).expanduser() if root is not None else path.parent
        names = canonical_classes(classes or list(FERID7))
        index = {c: i for i, c in enumerate(names)}
        records = []
        kinds = set()
        for rec in llava_ids(path, read_llava_json(path)):
            kinds.add(rec["video"])
            label = index.get(canonical_name(rec["answer"].rstrip(".")) or "", -1)
            records.append(
                Record(id=rec["id"], media=_media(resolve(base, rec["media"])), label=label,
                       question=rec["question"], answer=rec["answer"], source=f"{path}, record {rec['index']}")
            )
        if len(kinds) > 1:
            raise DataError(f"{path}: mixes image and video records; split them into two files")
        self.video = kinds == {True}
        super().__init__(records, names, f"llava-{path.stem}")
