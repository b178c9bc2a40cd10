"""Writes SynthFER to disk in a FER data set's layout, so the real adapters can read it back.

The trees follow ``shared/DATASETS.md``: RAF-DB's label file without a final
newline and ``Image/aligned/<stem>_aligned.jpg``; AffectNet's list CSVs with
face boxes and landmarks; FERPlus's ``fer2013.csv`` and ``fer2013new.csv``
(48x48 grey, ten votes for the drawn class); DFEW's split CSVs and
zero-padded frame folders; FERV39k's scene/emotion frame folders and lists;
MAFW's mp4 clips and per-fold lists. A ``synthfer.json`` beside them records
how the tree was made.

With ``folds > 1`` (DFEW, MAFW) the train and test samples are pooled and
split five ways as the real sets are: fold ``k`` tests on the samples whose
index is ``k - 1`` modulo ``folds`` and trains on the others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emofer.data.datasets.affectnet import AFFECTNET_CLASSES
from emofer.data.datasets.dfew import DFEW_CLASSES
from emofer.data.datasets.rafdb import RAFDB_CLASSES
from emofer.data.datasets.synthfer import SynthFER

log = logging.getLogger(__name__)

LAYOUTS = ("rafdb", "affectnet", "ferplus", "dfew", "ferv39k", "mafw")
VIDEO_LAYOUTS = ("dfew", "ferv39k", "mafw")
FOLDED_LAYOUTS = ("dfew", "mafw")
FERV39K_WORDS = {"happiness": "Happy", "sadness": "Sad", "neutral": "Neutral", "anger": "Angry",
                 "surprise": "Surprise", "disgust": "Disgust", "fear": "Fear"}
"""FERV39k's file labels of the canonical classes."""
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FER2013_CODES = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}


def export(
    out: str | os.PathLike[str],
    layout: str = "rafdb",
    train_size: int = 7000,
    test_size: int = 1400,
    seed: int = 0,
    image_size: int = 64,
    num_frames: int = 16,
    difficulty: float = 0.5,
    offset: bool = False,
    quality: int = 95,
    progress: Callable[[int, int], None] | None = None,
    folds: int = 1,
) -> Path:
    """Renders SynthFER's train and test splits into ``out`` in a data set's layout.

    Args:
        out: target folder (created; existing files of the same names are overwritten).
        layout: one of :data:`LAYOUTS`: ``rafdb``, ``affectnet``, ``ferplus`` (still
            images; FERPlus also gets a validation split of ``test_size``),
            ``dfew``, ``ferv39k`` (clips as frame folders), ``mafw`` (mp4 clips).
        train_size: training samples.
        test_size: test samples.
        seed: SynthFER's seed.
        image_size: side of the written images.
        num_frames: frames per clip (video layouts).
        difficulty: SynthFER's difficulty.
        offset: let clips relax after the apex (video layouts).
        quality: JPEG quality.
        progress: called with (done, total) after each sample.
        folds: ``dfew`` and ``mafw``: 1 writes fold 1 as SynthFER's train/test
            splits; 2-5 pool them and write that many cross-validation folds.

    Returns:
        The root folder, ready for ``DATASETS.build({"name": layout, "root": out, ...})``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 1 <= folds <= 5 or (folds > 1 and layout not in FOLDED_LAYOUTS):
        raise ValueError(f"folds must be 1, or 2-5 for the {FOLDED_LAYOUTS} layouts; got {folds} for {layout!r}")
    root = Path(out).expanduser()
    frames = num_frames if layout in VIDEO_LAYOUTS else 1
    sizes = [("train", train_size), ("test", test_size)]
    if layout == "ferplus":
        sizes.insert(1, ("val", test_size))
    splits = [
        SynthFER(s, size=n, seed=seed, image_size=image_size, num_frames=frames, difficulty=difficulty,
                 offset=offset, cache=False)
        for s, n in sizes
    ]
    tick = _counter(sum(n for _, n in sizes), progress)
    writers = {"rafdb": _rafdb, "affectnet": _affectnet, "ferplus": _ferplus, "dfew": _dfew,
               "ferv39k": _ferv39k, "mafw": _mafw}
    if layout in FOLDED_LAYOUTS:
        writers[layout](root, splits, quality, tick, folds)
    else:
        writers[layout](root, splits, quality, tick)
    meta = {"generator": "emofer synthfer", "layout": layout, "train_size": train_size, "test_size": test_size,
            "seed": seed, "image_size": image_size, "num_frames": frames, "difficulty": difficulty,
            "offset": offset, "folds": folds}
    (root / "synthfer.json").write_text(json.dumps(meta, indent=1))
    log.info("wrote SynthFER (%d train + %d test) in the %s layout to %s", train_size, test_size, layout, root)
    return root


def _counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    return tick


def _rafdb(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None]) -> None:
    images = root / "Image" / "aligned"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for ds in splits:
        digits = 5 if ds.split == "train" else max(4, len(str(len(ds))))
        for i in range(len(ds)):
            sample = ds[i]
            stem = f"{ds.split}_{i + 1:0{digits}d}"
            sample["image"].save(images / f"{stem}_aligned.jpg", quality=quality)
            lines.append(f"{stem}.jpg {RAFDB_CLASSES.index(ds.classes[sample['label']]) + 1}")
            tick()
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(lines))  # RAF-DB's file has no final newline


def _fold_lists(splits: list[SynthFER], folds: int) -> tuple[list[tuple[int, dict]], list[tuple[list[int], list[int]]]]:
    """Every sample with a 1-based clip number, and per fold the (train, test) clip numbers."""
    samples, index = [], 0
    for ds in splits:
        for i in range(len(ds)):
            index += 1
            samples.append((index, ds, i))
    if folds == 1:
        train = [n for n, ds, _ in samples if ds.split == "train"]
        return samples, [(train, [n for n, ds, _ in samples if ds.split != "train"])]
    out = []
    for k in range(folds):
        test = [n for n, _, _ in samples if (n - 1) % folds == k]
        out.append(([n for n, _, _ in samples if (n - 1) % folds != k], test))
    return samples, out


def _dfew(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None], folds: int = 1) -> None:
    clips = root / "Clip" / "clip_224x224"
    samples, fold_lists = _fold_lists(splits, folds)
    labels = {}
    for number, ds, i in samples:
        sample = ds[i]
        folder = clips / f"{number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(sample["frames"]):
            frame.save(folder / f"{t + 1:05d}.jpg", quality=quality)
        labels[number] = DFEW_CLASSES.index(ds.classes[sample["label"]]) + 1
        tick()
    for k, lists in enumerate(fold_lists, start=1):
        for split, numbers in zip(("train", "test"), lists, strict=True):
            rows = ["video_name,label"] + [f"{n},{labels[n]}" for n in numbers]
            split_file = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{k}.csv"
            split_file.parent.mkdir(parents=True, exist_ok=True)
            split_file.write_text("\n".join(rows) + "\n")


def _ferv39k(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None]) -> None:
    scenes = ("Action", "Daily", "Crime")
    lists = root / "4_setups" / "All_scenes"
    lists.mkdir(parents=True, exist_ok=True)
    for ds in splits:
        lines = []
        for i in range(len(ds)):
            sample = ds[i]
            word = FERV39K_WORDS[ds.classes[sample["label"]]]
            name = f"{scenes[i % len(scenes)]}/{word}/{ds.split}{i + 1:05d}"
            folder = root / "2_ClipsforFaceCrop" / name
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(sample["frames"]):
                frame.save(folder / f"{t + 1:05d}.jpg", quality=quality)
            lines.append(f"{name} {word}")
            tick()
        (lists / f"{ds.split}_All.csv").write_text("\n".join(lines) + "\n")


def _mafw(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None], folds: int = 1) -> None:
    import av

    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    samples, fold_lists = _fold_lists(splits, folds)
    labels = {}
    for number, ds, i in samples:
        sample = ds[i]
        with av.open(str(clips / f"{number:05d}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height = sample["frames"][0].size
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": str(max(1, round((100 - quality) / 10)))}
            for frame in sample["frames"]:
                for packet in stream.encode(av.VideoFrame.from_image(frame)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        labels[number] = ds.classes[sample["label"]]
        tick()
    base = root / "Train & Test Set" / "single" / "no_caption"
    for k, lists in enumerate(fold_lists, start=1):
        (base / f"set_{k}").mkdir(parents=True, exist_ok=True)
        for split, numbers in zip(("train", "test"), lists, strict=True):
            text = "\n".join(f"{n:05d}.mp4 {labels[n]}" for n in numbers) + "\n"
            (base / f"set_{k}" / f"{split}.txt").write_text(text)


def _affectnet(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None]) -> None:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for ds, name in zip(splits, ("training.csv", "validation.csv"), strict=True):
        rows = [header]
        for i in range(len(ds)):
            sample = ds[i]
            rel = f"{i % 50 + 1}/{ds.split}{i + 1:05d}.jpg"
            path = root / "Manually_Annotated_Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sample["image"].save(path, quality=quality)
            points = np.asarray(sample["landmarks"], dtype=np.float64)
            x0, y0 = np.floor(points.min(0)).astype(int)
            x1, y1 = np.ceil(points.max(0)).astype(int)
            marks = ";".join(f"{v:.2f}" for v in points.reshape(-1))
            code = AFFECTNET_CLASSES.index(ds.classes[sample["label"]])
            rows.append(f"{rel},{x0},{y0},{x1 - x0},{y1 - y0},{marks},{code},0,0")
            tick()
        (lists / name).write_text("\n".join(rows) + "\n")


def _ferplus(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None]) -> None:
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    pixels, votes, row = ["emotion,pixels,Usage"], ["Usage,Image name," + ",".join(FERPLUS_COLUMNS) + ",unknown,NF"], 0
    for ds in splits:
        for i in range(len(ds)):
            sample = ds[i]
            name = ds.classes[sample["label"]]
            grey = np.asarray(sample["image"].convert("L").resize((48, 48)), dtype=np.uint8)
            pixels.append(f"{FER2013_CODES[name]},{' '.join(map(str, grey.reshape(-1)))},{usage[ds.split]}")
            counts = ["10" if c == name else "0" for c in FERPLUS_COLUMNS] + ["0", "0"]
            votes.append(f"{usage[ds.split]},fer{row:07d}.png,{','.join(counts)}")
            row += 1
            tick()
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join(pixels) + "\n")
    (root / "fer2013new.csv").write_text("\n".join(votes) + "\n")
