"""Writes SynthFER to disk in the RAF-DB or DFEW layout, so the real adapters can read it back.

The trees follow ``shared/DATASETS.md``: RAF-DB's label file without a final
newline and ``Image/aligned/<stem>_aligned.jpg``; DFEW's fold-1 split CSVs
and zero-padded frame folders. A ``synthfer.json`` beside them records how
the tree was made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from emofer.data.datasets.dfew import DFEW_CLASSES
from emofer.data.datasets.rafdb import RAFDB_CLASSES
from emofer.data.datasets.synthfer import SynthFER

log = logging.getLogger(__name__)

LAYOUTS = ("rafdb", "dfew")


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
) -> Path:
    """Renders SynthFER's train and test splits into ``out`` in a data set's layout.

    Args:
        out: target folder (created; existing files of the same names are overwritten).
        layout: ``rafdb`` (still images) or ``dfew`` (clips as frame folders, fold 1).
        train_size: training samples.
        test_size: test samples.
        seed: SynthFER's seed.
        image_size: side of the written images.
        num_frames: frames per clip (``dfew`` only).
        difficulty: SynthFER's difficulty.
        offset: let clips relax after the apex (``dfew`` only).
        quality: JPEG quality.
        progress: called with (done, total) after each sample.

    Returns:
        The root folder, ready for ``DATASETS.build({"name": layout, "root": out, ...})``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(out).expanduser()
    frames = num_frames if layout == "dfew" else 1
    splits = [
        SynthFER(s, size=n, seed=seed, image_size=image_size, num_frames=frames, difficulty=difficulty,
                 offset=offset, cache=False)
        for s, n in (("train", train_size), ("test", test_size))
    ]
    total = train_size + test_size
    tick = _counter(total, progress)
    if layout == "rafdb":
        _rafdb(root, splits, quality, tick)
    else:
        _dfew(root, splits, quality, tick)
    meta = {"generator": "emofer synthfer", "layout": layout, "train_size": train_size, "test_size": test_size,
            "seed": seed, "image_size": image_size, "num_frames": frames, "difficulty": difficulty,
            "offset": offset}
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


def _dfew(root: Path, splits: list[SynthFER], quality: int, tick: Callable[[], None]) -> None:
    clips = root / "Clip" / "clip_224x224"
    video_id = 0
    for ds in splits:
        rows = ["video_name,label"]
        for i in range(len(ds)):
            sample = ds[i]
            video_id += 1
            folder = clips / f"{video_id:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(sample["frames"]):
                frame.save(folder / f"{t + 1:05d}.jpg", quality=quality)
            rows.append(f"{video_id},{DFEW_CLASSES.index(ds.classes[sample['label']]) + 1}")
            tick()
        split_file = root / "EmoLabel_DataSplit" / f"{ds.split}(single-labeled)" / "set_1.csv"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text("\n".join(rows) + "\n")
