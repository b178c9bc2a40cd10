"""SynthFER exported in every FER layout reads back through the real adapters with the same labels."""

from __future__ import annotations

import numpy as np
import pytest

from emofer.cli import main
from emofer.data import DATASETS
from emofer.data.datasets.synthfer import SynthFER
from emofer.data.synth.export import export


def _names(ds) -> list[str]:
    return [ds.classes[label] for label in ds.labels()]


def _synth(split: str, n: int, frames: int = 1) -> list[str]:
    syn = SynthFER(split, size=n, num_frames=frames)
    return [syn.classes[label] for label in syn.labels()]


def test_affectnet_layout_keeps_labels_boxes_and_both_protocols(tmp_path):
    export(tmp_path, "affectnet", train_size=14, test_size=7, image_size=32)
    eight = DATASETS.build({"name": "affectnet", "root": tmp_path, "split": "train", "protocol": 8})
    seven = DATASETS.build({"name": "affectnet", "root": tmp_path, "split": "test", "protocol": 7})
    assert _names(eight) == _synth("train", 14) and _names(seven) == _synth("test", 7)
    sample = seven[2]
    x, y, w, h = sample["box"]
    lm = sample["landmarks"]
    assert w > 0 and h > 0 and lm.shape == (68, 2)
    assert x <= lm[:, 0].min() and lm[:, 0].max() <= x + w and y <= lm[:, 1].min() and lm[:, 1].max() <= y + h


def test_ferplus_layout_decodes_from_the_csv_with_a_validation_split(tmp_path):
    export(tmp_path, "ferplus", train_size=14, test_size=7, image_size=32)
    for split, syn_split in (("train", "train"), ("val", "val"), ("test", "test")):
        ds = DATASETS.build({"name": "ferplus", "root": tmp_path, "split": split})
        n = 14 if split == "train" else 7
        assert [ds.classes[s["label"]] for s in ds] == _synth(syn_split, n)
    assert ds[0]["image"].size == (48, 48)


def test_ferv39k_layout_reads_scene_emotion_folders(tmp_path):
    export(tmp_path, "ferv39k", train_size=7, test_size=7, num_frames=3, image_size=32)
    test = DATASETS.build({"name": "ferv39k", "root": tmp_path, "split": "test"})
    assert _names(test) == _synth("test", 7, 3)
    assert len(test[0]["media"]) == 3 and "/2_ClipsforFaceCrop/" in test[0]["media"][0]


@pytest.mark.parametrize("layout", ["dfew", "mafw"])
def test_five_folds_partition_the_pooled_clips(tmp_path, layout):
    assert main(["data", "synth", "--out", str(tmp_path), "--layout", layout, "--train-size", "14",
                 "--test-size", "7", "--num-frames", "2", "--image-size", "32", "--folds", "5"]) == 0
    pooled = _synth("train", 14, 2) + _synth("test", 7, 2)
    tests = []
    for fold in range(1, 6):
        train = DATASETS.build({"name": layout, "root": tmp_path, "split": "train", "fold": fold})
        test = DATASETS.build({"name": layout, "root": tmp_path, "split": "test", "fold": fold})
        ids = [int(s["id"]) for s in test]
        assert not set(ids) & {int(s["id"]) for s in train} and len(ids) + len(train) == 21
        assert [test.classes[label] for label in test.labels()] == [pooled[i - 1] for i in ids]
        tests += ids
    assert sorted(tests) == list(range(1, 22))  # every clip is tested in exactly one fold
    if layout == "mafw":  # the mp4 clips decode through the data pipeline's reader
        from emofer.data.video import read_video

        frames = read_video(test[0]["media"], 2, False, np.random.default_rng(0))
        assert len(frames) == 2


def test_folds_are_refused_for_unfolded_layouts(tmp_path):
    with pytest.raises(ValueError, match="folds must be 1"):
        export(tmp_path, "ferv39k", train_size=7, test_size=7, folds=5)
