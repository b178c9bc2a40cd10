"""Each data-set adapter on a small tree written in its distributed layout, quirks included."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emofer.data import DATASETS, AnnotationError, DataError
from emofer.data.datasets.ferplus import FERPLUS_CLASSES, majority_vote
from emofer.data.instructions import dataset_records, write_llava_json


def _jpg(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def test_registry_lists_every_builtin_adapter():
    for name in ("rafdb", "affectnet", "ferplus", "dfew", "ferv39k", "mafw", "csv", "llava-json", "synthfer"):
        assert name in DATASETS
        assert DATASETS.describe(name)


# -- RAF-DB -------------------------------------------------------------------
RAF_LINES = ["train_00001.jpg 5", "train_00002.jpg 1", "train_00003.jpg 7", "test_0001.jpg 4", "test_0002.jpg 6"]


def _rafdb(root: Path, lines: list[str] = RAF_LINES) -> Path:
    label = root / "EmoLabel" / "list_patition_label.txt"
    label.parent.mkdir(parents=True)
    label.write_text("\n".join(lines))  # like the release: no newline after the last line
    for line in lines:
        stem = line.split()[0][:-4]
        _jpg(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
    return root


def test_rafdb_counts_class_mapping_and_paths(tmp_path):
    root = _rafdb(tmp_path)
    train = DATASETS.build({"name": "rafdb", "root": root, "split": "train"})
    test = DATASETS.build({"name": "rafdb", "root": root, "split": "test"})
    assert (len(train), len(test)) == (3, 2)
    assert train.classes == ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    assert [train.classes[s["label"]] for s in train] == ["sadness", "surprise", "neutral"]
    last = test[1]  # the line without a trailing newline
    assert last["id"] == "test_0002" and last["classes"][last["label"]] == "anger"
    assert last["media"].endswith("Image/aligned/test_0002_aligned.jpg") and Path(last["media"]).is_file()


def test_rafdb_sub_paths_are_overridable(tmp_path):
    root = _rafdb(tmp_path)
    (root / "Image" / "aligned").rename(root / "faces")
    ds = DATASETS.build({"name": "rafdb", "root": root, "split": "train", "image_dir": "faces"})
    assert Path(ds[0]["media"]).is_file()


@pytest.mark.parametrize(
    "bad, match",
    [
        ("train_00009.jpg 8", r"line 2: label '8' is not an integer in 1..7"),
        ("train_00009.jpg happy", r"line 2: label 'happy'"),
        ("train_00009.jpg", r"line 2: expected 'name label'"),
    ],
)
def test_rafdb_bad_lines_name_file_and_line(tmp_path, bad, match):
    root = _rafdb(tmp_path, ["train_00001.jpg 5", bad, "train_00003.jpg 7"])
    with pytest.raises(AnnotationError, match=r"list_patition_label\.txt, " + match):
        DATASETS.build({"name": "rafdb", "root": root, "split": "train"})
    ds = DATASETS.build({"name": "rafdb", "root": root, "split": "train", "on_bad_sample": "skip"})
    assert len(ds) == 2 and len(ds.skipped) == 1 and "line 2" in ds.skipped[0]


def test_missing_root_and_label_file_are_clear(tmp_path):
    with pytest.raises(DataError, match="rafdb: root folder not found"):
        DATASETS.build({"name": "rafdb", "root": tmp_path / "nope"})
    with pytest.raises(DataError, match=r"RAF-DB label file not found: .*label_file="):
        DATASETS.build({"name": "rafdb", "root": tmp_path})


# -- AffectNet ------------------------------------------------------------------
AFFECT_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def _affect_row(path: str, code: int, width: int = 40, landmarks: bool = True) -> str:
    lm = ";".join(f"{v:.2f}" for v in np.arange(136) * 0.5) if landmarks else ""
    return f"{path},10,12,{width},42,{lm},{code},0.5,-0.2"


def _affectnet(root: Path) -> Path:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    rows = [_affect_row(f"{i}/img{i}.jpg", code) for i, code in enumerate([0, 1, 7, 8, 9, 10, 6])]
    rows.append(_affect_row("7/neg.jpg", 3, width=-5))  # negative face width: skipped, counted
    (lists / "training.csv").write_text("\n".join([AFFECT_HEADER, *rows]) + "\n")
    (lists / "validation.csv").write_text("\n".join([AFFECT_HEADER, _affect_row("v/a.jpg", 5, landmarks=False)]))
    return root


def test_affectnet_protocols_codes_and_boxes(tmp_path):
    root = _affectnet(tmp_path)
    eight = DATASETS.build({"name": "affectnet", "root": root, "split": "train", "protocol": 8})
    seven = DATASETS.build({"name": "affectnet", "root": root, "split": "train", "protocol": 7})
    assert [eight.classes[s["label"]] for s in eight] == ["neutral", "happiness", "contempt", "anger"]
    assert [seven.classes[s["label"]] for s in seven] == ["neutral", "happiness", "anger"]
    assert len(seven.classes) == 7 and "contempt" not in seven.classes
    assert eight.negative_box_rows == 1 and eight.dropped_rows == 3  # codes 8, 9, 10
    s = eight[0]
    assert s["box"] == (10, 12, 40, 42) and s["landmarks"].shape == (68, 2)
    assert s["landmarks"][1].tolist() == [1.0, 1.5]
    assert s["media"].endswith("Manually_Annotated_Images/0/img0.jpg")
    val = DATASETS.build({"name": "affectnet", "root": root, "split": "test"})
    assert len(val) == 1 and "landmarks" not in val[0] and val.classes[val[0]["label"]] == "disgust"


def test_affectnet_out_of_range_code_is_an_error(tmp_path):
    root = _affectnet(tmp_path)
    path = root / "Manually_Annotated_file_lists" / "training.csv"
    path.write_text(path.read_text() + _affect_row("x.jpg", 11) + "\n")
    with pytest.raises(AnnotationError, match=r"training\.csv, line 10: expression code 11 is outside 0..10"):
        DATASETS.build({"name": "affectnet", "root": root})


# -- FERPlus --------------------------------------------------------------------
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# (usage, name, votes, majority-vote result)
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None),  # 4 of 9 after dropping the single vote
    ("Training", "fer0000001.png", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], "neutral"),  # 6 of 8 once single votes go
    ("Training", "", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], "happiness"),  # but no image name: skipped
    ("Training", "fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8], None),  # not a face
    ("PublicTest", "fer0000004.png", [0, 0, 0, 0, 9, 1, 0, 0, 0, 0], "anger"),
    ("PrivateTest", "fer0000005.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),  # all single votes: unknown
    ("PrivateTest", "fer0000006.png", [0, 0, 0, 0, 0, 0, 0, 7, 3, 0], "contempt"),
]


def _ferplus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_HEADER.split(","))
        for usage, name, votes, _ in FERPLUS_ROWS:
            w.writerow([usage, name, *votes])
    with open(root / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for i, (usage, *_rest) in enumerate(FERPLUS_ROWS):
            w.writerow([0, " ".join([str(10 * i)] * 2304), usage])
    return root


@pytest.mark.parametrize("votes, expected", [(r[2], r[3]) for r in FERPLUS_ROWS])
def test_majority_vote_follows_microsoft_ferplus(votes, expected):
    got = majority_vote([float(v) for v in votes])
    assert (None if got is None else FERPLUS_CLASSES[got]) == expected


def test_ferplus_decodes_from_fer2013_csv_without_png_folders(tmp_path):
    root = _ferplus(tmp_path)
    train = DATASETS.build({"name": "ferplus", "root": root, "split": "train"})
    assert [train.classes[s["label"]] for s in train] == ["neutral"]
    s = train[0]
    assert s["id"] == "fer0000001" and s["image"].size == (48, 48) and s["image"].mode == "RGB"
    assert np.asarray(s["image"])[0, 0].tolist() == [10, 10, 10]  # row 1 of fer2013.csv
    val = DATASETS.build({"name": "ferplus", "root": root, "split": "val"})
    test = DATASETS.build({"name": "ferplus", "root": root, "split": "test"})
    assert [val.classes[x["label"]] for x in val] == ["anger"]
    assert [test.classes[x["label"]] for x in test] == ["contempt"]
    assert np.asarray(test[0]["image"])[5, 5, 0] == 60


def test_ferplus_reads_png_folders_and_legacy_labels(tmp_path):
    root = _ferplus(tmp_path)
    folder = root / "FER2013Train"
    _jpg(folder / "fer0000001.png", 200, 48)
    ds = DATASETS.build({"name": "ferplus", "root": root, "split": "train"})
    assert ds[0]["media"] == str(folder / "fer0000001.png") and "image" not in ds[0]
    (folder / "label.csv").write_text(
        'fer0000001.png,"(0, 0, 48, 48)",0,9,0,0,0,0,1,0,0,0\nfer0000002.png,"(0, 0, 48, 48)",5,5,0,0,0,0,0,0,0,0'
    )
    legacy = DATASETS.build({"name": "ferplus", "root": root, "split": "train", "labels": "legacy"})
    assert [legacy.classes[x["label"]] for x in legacy] == ["happiness"]  # 5/5 is a tie: unknown


def test_ferplus_usage_mismatch_is_never_silent(tmp_path):
    root = _ferplus(tmp_path)
    text = (root / "fer2013.csv").read_text().replace("PublicTest", "Training")
    (root / "fer2013.csv").write_text(text)
    with pytest.raises(AnnotationError, match=r"fer2013\.csv, line 6: Usage is 'Training' where the vote file"):
        DATASETS.build({"name": "ferplus", "root": root, "split": "val"})


# -- DFEW -----------------------------------------------------------------------
def _dfew(root: Path) -> Path:
    for split, rows in (("train", [(1, 1), (2, 7), (12, 3)]), ("test", [(3, 4)])):
        f = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / "set_2.csv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("video_name,label\n" + "\n".join(f"{v},{lab}" for v, lab in rows) + "\n")
        for v, _ in rows:
            for t in (3, 1, 2):  # written out of order: read sorted by name
                _jpg(root / "Clip" / "clip_224x224" / f"{v:05d}" / f"{t:05d}.jpg", 10 * t)
    return root


def test_dfew_zero_padded_frame_folders_and_folds(tmp_path):
    root = _dfew(tmp_path)
    train = DATASETS.build({"name": "dfew", "root": root, "split": "train", "fold": 2})
    assert train.video and len(train) == 3
    assert [train.classes[s["label"]] for s in train] == ["happiness", "fear", "neutral"]
    s = train[2]
    assert s["id"] == "00012" and [Path(p).name for p in s["media"]] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert Path(s["media"][0]).parent.name == "00012"
    test = DATASETS.build({"name": "dfew", "root": root, "split": "test", "fold": 2})
    assert test.classes[test[0]["label"]] == "anger"
    with pytest.raises(DataError, match=r"set_1\.csv"):
        DATASETS.build({"name": "dfew", "root": root, "split": "train", "fold": 1})


# -- FERV39k --------------------------------------------------------------------
def test_ferv39k_string_labels_in_its_class_order(tmp_path):
    lists = tmp_path / "4_setups" / "All_scenes"
    lists.mkdir(parents=True)
    (lists / "train_All.csv").write_text("Action/Sad/0010 Sad\nDaily/Happy/0003 Happy\nDaily/Angry/0001 Angry")
    (lists / "test_All.csv").write_text("Action/Fear/0002 Fear\n")
    _jpg(tmp_path / "2_ClipsforFaceCrop" / "Action" / "Sad" / "0010" / "1.jpg")
    train = DATASETS.build({"name": "ferv39k", "root": tmp_path, "split": "train"})
    assert train.classes == ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
    assert [s for s in train.labels()] == [1, 0, 3]
    assert train[0]["media"][0].endswith("2_ClipsforFaceCrop/Action/Sad/0010/1.jpg")
    test = DATASETS.build({"name": "ferv39k", "root": tmp_path, "split": "test"})
    assert test.classes[test.labels()[0]] == "fear"


# -- MAFW -----------------------------------------------------------------------
def _mafw(root: Path, lines: list[str]) -> Path:
    d = root / "Train & Test Set" / "single" / "no_caption" / "set_3"
    d.mkdir(parents=True)
    (d / "train.txt").write_text("\n".join(lines))
    return root


def test_mafw_eleven_classes_and_clip_paths(tmp_path):
    root = _mafw(tmp_path, ["00025.mp4 anger", "00026.mp4 helplessness", "00027.mp4 disappointment"])
    ds = DATASETS.build({"name": "mafw", "root": root, "split": "train", "fold": 3})
    assert len(ds.classes) == 11 and ds.classes[-1] == "disappointment"
    assert ds.labels() == [0, 9, 10] and ds[0]["media"].endswith("clips/00025.mp4")
    frames = DATASETS.build({"name": "mafw", "root": root, "split": "train", "fold": 3, "frame_dir": "frames"})
    assert frames.records[0].media.path.endswith("frames/00025")


def test_mafw_compound_label_is_rejected_with_a_hint(tmp_path):
    root = _mafw(tmp_path, ["00025.mp4 anger", "00026.mp4 anger_disgust"])
    with pytest.raises(AnnotationError, match=r"train\.txt, line 2: unknown label 'anger_disgust' \(compound"):
        DATASETS.build({"name": "mafw", "root": root, "split": "train", "fold": 3})


# -- generic CSV and LLaVA JSON ------------------------------------------------
def test_csv_adapter_names_indices_and_split(tmp_path):
    _jpg(tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("path,label,split\na.jpg,Happy,train\nb.jpg,angry,train\nc.mp4,sad,test\n")
    ds = DATASETS.build({"name": "csv", "file": tmp_path / "list.csv", "split": "train"})
    assert ds.classes == ("happiness", "sadness", "anger") and ds.labels() == [0, 2]
    assert ds[0]["media"] == str(tmp_path / "a.jpg") and not ds.video
    (tmp_path / "idx.csv").write_text("path,label\nclip1,1\nclip2,3\n")
    with pytest.raises(AnnotationError, match=r"idx\.csv, line 3: label 3 is out of range 0..1"):
        DATASETS.build({"name": "csv", "file": tmp_path / "idx.csv", "classes": ["neutral", "fear"]})
    (tmp_path / "idx.csv").write_text("path,label\nclip1,1\n")
    vids = DATASETS.build({"name": "csv", "file": tmp_path / "idx.csv", "classes": ["neutral", "fear"]})
    assert vids.video and vids.records[0].media.path == str(tmp_path / "clip1")


def test_llava_json_round_trip_from_an_adapter(tmp_path):
    root = _rafdb(tmp_path / "raf")
    ds = DATASETS.build({"name": "rafdb", "root": root, "split": "train"})
    records = dataset_records(ds, root=root, seed=1)
    assert records[0]["image"] == "Image/aligned/train_00001_aligned.jpg"
    turn = records[0]["conversations"][0]["value"]
    assert turn.startswith("<image>\nWhat is the facial expression of the person in the image? Choose one")
    write_llava_json(records, root / "ferid.json")
    back = DATASETS.build({"name": "llava-json", "file": root / "ferid.json", "classes": list(ds.classes)})
    assert back.labels() == ds.labels()
    s = back[0]
    assert s["question"] == turn.removeprefix("<image>\n") and s["answer"] == "sadness"
    assert Path(s["media"]).is_file()
