"""The bad-input corpus: odd image modes are converted; broken files and lines name themselves."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from emofer.data import DATASETS, AnnotationError, BadSampleError
from emofer.data.datamodule import EmoFERDataModule
from emofer.data.media import list_frames, load_image


def _jpeg_bytes(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode, array, expected",
    [
        ("L", np.full((4, 4), 77, np.uint8), 77),
        ("RGBA", np.dstack([np.full((4, 4, 3), 200, np.uint8), np.zeros((4, 4), np.uint8)]), 200),
        ("I;16", np.full((4, 4), 65535, np.uint16), 255),
        ("I;16", np.full((4, 4), 32896, np.uint16), 128),
    ],
)
def test_grey_rgba_and_16_bit_images_become_8_bit_rgb(tmp_path, mode, array, expected):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode or mode == "I;16" and Image.open(path).mode == "I"
    img = load_image(path)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [expected] * 3


def test_palette_image_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 3)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("random.jpg", b"\x13\x37" * 100, "not a readable image"),
        ("empty.png", b"", "not a readable image"),
        ("truncated.jpg", _jpeg_bytes()[:300], "corrupt or truncated image"),
    ],
)
def test_broken_images_raise_a_message_naming_the_file(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadSampleError, match=rf"{name}: {match}") as err:
        load_image(tmp_path / name)
    assert err.value.__suppress_context__ and err.value.path == str(tmp_path / name)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(BadSampleError, match=r"missing\.jpg: file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(BadSampleError, match="frame folder not found"):
        list_frames(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadSampleError, match="frame folder holds no images"):
        list_frames(tmp_path / "empty")


def _raf_tree(root: Path) -> Path:
    lines = [f"test_{i:04d}.jpg {1 + i % 7}" for i in range(1, 9)]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines))
    images = root / "Image" / "aligned"
    images.mkdir(parents=True)
    for i in range(1, 9):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(images / f"test_{i:04d}_aligned.jpg")
    (images / "test_0003_aligned.jpg").write_bytes(_jpeg_bytes()[:200])  # truncated
    (images / "test_0006_aligned.jpg").unlink()  # missing
    return root


def _module(root: Path, policy: str) -> EmoFERDataModule:
    tf = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    return EmoFERDataModule(
        {"train": [], "test": [{"name": "rafdb", "root": str(root), "split": "test"}], "eval_batch_size": 4,
         "on_bad_sample": policy},
        transforms=lambda train: (tf, None),
    )


def test_bad_samples_stop_the_run_with_the_file_name(tmp_path):
    dm = _module(_raf_tree(tmp_path), "error")
    dm.setup("test")
    with pytest.raises(BadSampleError, match=r"test_0003_aligned\.jpg: corrupt or truncated image"):
        list(dm.test_dataloader()[0])


def test_skipped_bad_samples_are_counted_and_reported_once(tmp_path, caplog):
    dm = _module(_raf_tree(tmp_path), "skip")
    dm.setup("test")
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.test_dataloader()[0]]
    ids = sum((b["ids"] for b in batches), [])
    assert [len(b["ids"]) for b in batches] == [3, 3]  # dropped from evaluation, never replaced
    assert ids == ["test_0001", "test_0002", "test_0004", "test_0005", "test_0007", "test_0008"]
    assert "skipped" not in batches[0]
    with caplog.at_level(logging.WARNING, logger="emofer.data.datamodule"):
        dm.teardown("test")
        dm.teardown("test")
    reports = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(reports) == 1
    assert "skipped 2 bad sample(s)" in reports[0] and "test_0003_aligned.jpg" in reports[0]
    assert "test_0006_aligned.jpg: file not found" in reports[0]


def test_annotation_lines_are_counted_under_skip_and_fatal_otherwise(tmp_path):
    split = tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    split.parent.mkdir(parents=True)
    split.write_text("video_name,label\n1,3\nabc,2\n2,9\n3,\n4,2")
    with pytest.raises(AnnotationError, match=r"set_1\.csv, line 3: expected 'video_name,label' with an integer"):
        DATASETS.build({"name": "dfew", "root": tmp_path})
    ds = DATASETS.build({"name": "dfew", "root": tmp_path, "on_bad_sample": "skip"})
    assert ds.labels() == [2, 1] and len(ds.skipped) == 3
    assert any("line 4: label '9' is not an integer in 1..7" in m for m in ds.skipped)


def test_an_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        EmoFERDataModule({"on_bad_sample": "ignore"})
