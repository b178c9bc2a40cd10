"""The bad-input corpus (issue 20): each case is refused with a message that names its culprit
(file and line, key, argument or value), or is normalised to what the good input gives."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import emofer
from emofer.cli import main
from emofer.data import DATASETS, AnnotationError, BadSampleError
from emofer.data.media import load_image, to_rgb
from emofer.data.pipeline import SampleProcessor
from emofer.model import EmoFERModel

# -- annotation values ----------------------------------------------------------------------------

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def _ferplus(root: Path, votes: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_HEADER.split(","))
        w.writerow(["Training", "fer0000000.png", *["0"] * 9, "10"])
        w.writerow(["Training", "fer0000001.png", *votes])
    with open(root / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for _ in range(2):
            w.writerow([0, " ".join(["7"] * 2304), "Training"])
    return root


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_ferplus_non_finite_votes_are_refused_not_counted_as_zero(tmp_path, bad):
    # without the check, nan fails every comparison and the row is labelled 'happiness'
    root = _ferplus(tmp_path, [bad, "6", "0", "0", "0", "0", "0", "0", "0", "0"])
    with pytest.raises(AnnotationError, match=r"fer2013new\.csv, line 3: vote counts must be finite"):
        DATASETS.build({"name": "ferplus", "root": root})


AFFECT_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression"


def _affectnet(root: Path, rows: list[str], images: dict[str, tuple[int, int]] | None = None) -> Path:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "training.csv").write_text("\n".join([AFFECT_HEADER, *rows]) + "\n")
    for rel, size in (images or {}).items():
        path = root / "Manually_Annotated_Images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 90, 90)).save(path)
    return root


def _affect_row(path: str, code: int = 1, box: str = "2,2,20,20", landmarks: list[str] | None = None) -> str:
    lm = ";".join(landmarks if landmarks is not None else [f"{v:.1f}" for v in np.arange(136) % 20])
    return f"{path},{box},{lm},{code}"


def test_affectnet_nan_landmarks_are_refused_with_the_line(tmp_path):
    lm = [f"{v:.1f}" for v in np.arange(136) % 20]
    lm[7] = "nan"
    root = _affectnet(tmp_path, [_affect_row("a/1.jpg"), _affect_row("a/2.jpg", landmarks=lm)])
    with pytest.raises(AnnotationError, match=r"training\.csv, line 3: facial_landmarks must be 136 finite numbers"):
        DATASETS.build({"name": "affectnet", "root": root})


def test_affectnet_nan_box_is_refused_with_the_line(tmp_path):
    root = _affectnet(tmp_path, [_affect_row("a/1.jpg", box="nan,2,20,20")])
    with pytest.raises(AnnotationError, match=r"training\.csv, line 2: expression and face box must be finite"):
        DATASETS.build({"name": "affectnet", "root": root})


def test_affectnet_box_outside_the_image_names_file_and_row(tmp_path):
    root = _affectnet(tmp_path, [_affect_row("a/1.jpg"), _affect_row("a/2.jpg", box="500,500,40,40")],
                      images={"a/1.jpg": (48, 48), "a/2.jpg": (48, 48)})
    ds = DATASETS.build({"name": "affectnet", "root": root})
    proc = SampleProcessor((lambda im: torch.zeros(3, 4, 4), None), face_crop=True)
    assert proc(ds[0])["pixels"].shape == (1, 3, 4, 4)
    with pytest.raises(BadSampleError, match=r"a/2\.jpg: face box .* lies outside the 48x48 image "
                                             r"\(annotation: .*training\.csv, line 3\)"):
        proc(ds[1])


def _raf(root: Path, lines: list[str]) -> dict:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return {"name": "rafdb", "root": root, "split": "test"}


def _dfew(root: Path, lines: list[str]) -> dict:
    f = root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    f.parent.mkdir(parents=True)
    f.write_text("video_name,label\n" + "\n".join(lines) + "\n")
    return {"name": "dfew", "root": root, "split": "test"}


def _csv(root: Path, lines: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "list.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    return {"name": "csv", "file": root / "list.csv"}


def _affect(root: Path, lines: list[str]) -> dict:
    _affectnet(root, lines)
    return {"name": "affectnet", "root": root}


# (builder, lines with a repeated id at lines a and b of the file, file name, first line, second line)
DUPLICATES = [
    (_raf, ["test_0001.jpg 4", "test_0002.jpg 5", "test_0001.jpg 6"], "list_patition_label.txt", 1, 3),
    (_dfew, ["1,1", "2,3", "1,5"], "set_1.csv", 2, 4),
    (_csv, ["a.jpg,happy", "b.jpg,sad", "a.jpg,angry"], "list.csv", 2, 4),
    (_affect, [_affect_row("x/1.jpg", 1), _affect_row("x/2.jpg", 2), _affect_row("x/1.jpg", 3)], "training.csv", 2, 4),
]


@pytest.mark.parametrize("build, lines, name, first, second", DUPLICATES, ids=["rafdb", "dfew", "csv", "affectnet"])
def test_a_repeated_sample_id_is_an_error_naming_both_lines(tmp_path, build, lines, name, first, second):
    cfg = build(tmp_path / "d", lines)
    with pytest.raises(AnnotationError, match=rf"{name}, line {second}: sample id .* is listed twice with another "
                                              rf"label .*; first at .*{name}, line {first}$"):
        DATASETS.build(cfg)
    skipped = DATASETS.build({**cfg, "on_bad_sample": "skip"})  # under skip: the later one is dropped, counted
    assert len(skipped) == len(lines) - 1 and len(skipped.skipped) == 1


def _llava(path: Path, records: list[tuple[str, str, str, str]]) -> Path:
    data = [{"id": i, "image": m, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                      {"from": "gpt", "value": a}]} for i, m, q, a in records]
    path.write_text(json.dumps(data))
    return path


def test_llava_json_duplicate_policy(tmp_path):
    # several conversations about one picture share an id in LLaVA files: kept, renamed id#2
    ok = _llava(tmp_path / "ok.json", [("s1", "a.jpg", "What is the expression?", "happiness"),
                                        ("s1", "a.jpg", "Describe the face.", "A smile."),
                                        ("s2", "b.jpg", "What is the expression?", "sadness")])
    ds = DATASETS.build({"name": "llava-json", "file": ok})
    assert [r.id for r in ds.records] == ["s1", "s1#2", "s2"]
    # the same question twice with two answers, or one id on two pictures: an error naming both records
    bad = _llava(tmp_path / "bad.json", [("s1", "a.jpg", "What is the expression?", "happiness"),
                                          ("s1", "a.jpg", "What is the expression?", "sadness")])
    with pytest.raises(AnnotationError, match=r"bad\.json: record 1: id 's1' repeats record 0 with the same question "
                                              r"and another answer"):
        DATASETS.build({"name": "llava-json", "file": bad})
    other = _llava(tmp_path / "other.json", [("s1", "a.jpg", "Q?", "happiness"), ("s1", "b.jpg", "Q?", "happiness")])
    with pytest.raises(AnnotationError, match=r"other\.json: record 1: id 's1' repeats record 0 with another media"):
        DATASETS.build({"name": "llava-json", "file": other})


def test_latin1_csv_and_llava_json_name_the_file(tmp_path):
    (tmp_path / "list.csv").write_bytes("path,label\ncaf\xe9.jpg,happy\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"list\.csv: not a UTF-8 text file"):
        DATASETS.build({"name": "csv", "file": tmp_path / "list.csv"})
    _llava(tmp_path / "i.json", [("s1", "a.jpg", "Qu'est-ce que c'est\xe9?", "happiness")])
    (tmp_path / "i.json").write_bytes((tmp_path / "i.json").read_text().replace("\\u00e9", "\xe9").encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"i\.json: not a UTF-8 text file"):
        DATASETS.build({"name": "llava-json", "file": tmp_path / "i.json"})
    dfew = _dfew(tmp_path / "dfew", ["1,1"])
    split = tmp_path / "dfew" / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    split.write_bytes(split.read_bytes() + "2,2 caf\xe9\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"set_1\.csv: not a UTF-8 text file"):
        DATASETS.build(dfew)


# -- images ---------------------------------------------------------------------------------------


def test_a_float_tiff_in_0_1_equals_the_8_bit_picture(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.float32) / 255.0, "F").save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    assert np.array_equal(np.asarray(load_image(tmp_path / "float.tif")), np.asarray(load_image(tmp_path / "eight.png")))
    Image.fromarray(grey.astype(np.float32), "F").save(tmp_path / "float255.tif")  # 0..255 floats: as 8 bits
    assert np.array_equal(np.asarray(load_image(tmp_path / "float255.tif")), np.asarray(load_image(tmp_path / "eight.png")))


def test_a_float_image_with_nan_is_refused_naming_the_file(tmp_path):
    a = np.zeros((4, 4), np.float32)
    a[1, 1] = np.nan
    Image.fromarray(a, "F").save(tmp_path / "nan.tif")
    with pytest.raises(BadSampleError, match=r"nan\.tif: a float image holds NaN"):
        load_image(tmp_path / "nan.tif")


def test_exif_orientation_is_applied_on_every_path(tmp_path):
    upright = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; a bright left column marks the top
    upright[:, :2] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 10 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to show": undoes the counter-clockwise turn above
    stored.save(tmp_path / "phone.png", exif=exif)
    assert Image.open(tmp_path / "phone.png").size == (10, 20)
    want = upright
    assert np.array_equal(np.asarray(load_image(tmp_path / "phone.png")), want)  # data sets, predict
    assert np.array_equal(np.asarray(to_rgb(Image.open(tmp_path / "phone.png"))), want)  # classify(PIL image)
    sample = {"id": "x", "image": Image.open(tmp_path / "phone.png"), "label": 0, "classes": ["neutral"]}
    seen = []
    SampleProcessor((lambda im: seen.append(np.asarray(im)) or torch.zeros(3, 1, 1), None))(sample)
    assert np.array_equal(seen[0], want)  # in-memory data-set images


# -- API and CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return emofer.build_model(emofer.load_config("classifier-tiny"))


def test_classify_refuses_nan_tensors_and_empty_labels(tiny_model):
    image = torch.rand(3, 32, 32)
    assert tiny_model.classify(image)[0].label in tiny_model.classes
    with pytest.raises(ValueError, match=r"tensor input of shape \(3, 32, 32\) holds 3072 NaN"):
        tiny_model.classify(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"labels must be a non-empty list .* got \[\]"):
        tiny_model.classify(image, labels=[])
    with pytest.raises(ValueError, match=r"num_frames must be an integer of at least 1, got 0"):
        tiny_model.classify(image, num_frames=0)


def test_unknown_model_class_is_refused_at_build_time():
    cfg = emofer.load_config("classifier-tiny", ["model.classes=[happiness,hapiness]"])
    with pytest.raises(ValueError, match=r"model.classes .* has unknown label\(s\) \['hapiness'\]"):
        emofer.build_model(cfg)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["predict", "x.png", "--model", "m", "--labels", ""], "--labels names no label: ''"),
        (["predict", "x.png", "--model", "m", "--labels", " , "], "--labels names no label: ' , '"),
        (["predict", "x.png", "--model", "m", "--frames", "0"], "--frames must be at least 1, got 0"),
        (["data", "synth", "--out", "OUT", "--train-size", "-5"], "--train-size must be 0 or more, got -5"),
        (["data", "info", "rafdb", "root"], "expected KEY=VALUE, got 'root'"),
    ],
)
def test_cli_usage_refusals_are_one_line_naming_the_argument(tmp_path, capsys, argv, culprit):
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    assert main(argv) == 2
    assert culprit in _one_line_error(capsys)


def test_an_empty_config_file_is_refused_not_defaulted(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    with pytest.raises(emofer.ConfigError, match=r"empty\.yaml: the config file is empty"):
        emofer.load_config(tmp_path / "empty.yaml")
    assert main(["train", "-c", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "empty.yaml: the config file is empty" in _one_line_error(capsys)


@pytest.mark.parametrize("text", ["name: g\nbase: classifier-tiny\ngrid:\n", "name: g\nbase: classifier-tiny\ngrid: {}\nruns: []\n"])
def test_a_grid_without_runs_is_refused(tmp_path, capsys, text):
    (tmp_path / "g.yaml").write_text(text)
    assert main(["grid", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out")]) == 2
    line = _one_line_error(capsys)
    assert "g.yaml: the grid names no runs" in line and not (tmp_path / "out" / "runs").exists()


def test_a_second_grid_into_a_running_grids_folder_is_one_line(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    (tmp_path / "g.yaml").write_text("name: g\nbase: classifier-tiny\ngrid: {seed: [0]}\n")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the running grid
    try:
        (out / "grid.json").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        assert main(["grid", str(tmp_path / "g.yaml"), "--out", str(out)]) == 1
    finally:
        other.kill()
        other.wait()
    assert f"another grid is running in {out} (process {other.pid}" in _one_line_error(capsys)


def test_verbose_adds_the_traceback(tmp_path, capsys):
    assert main(["-v", "predict", "x.png", "--model", "m", "--frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "--frames must be at least 1" in err


def test_unsafe_weights_and_checkpoints_are_named(tmp_path, tiny_model, capsys):
    import pickle

    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    cases = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "corrupt": b"\xff" * 8 + good[8:],
        "pickle": pickle.dumps({"w": [1, 2]}),
    }
    for name, content in cases.items():
        weights.write_bytes(content)
        (folder / "manifest.json").unlink(missing_ok=True)  # the file itself must be named, not only the manifest
        with pytest.raises(ValueError, match=rf"{weights}") as err:
            EmoFERModel.from_pretrained(folder)
        assert "weights_only" not in str(err.value), name
        if name == "pickle":
            assert "is a Python pickle" in str(err.value)
    torch.save({"w": torch.ones(2)}, weights)  # torch.save's zip of pickles
    with pytest.raises(ValueError, match=rf"{weights} is a Python pickle \(torch.save\), not a safetensors file"):
        EmoFERModel.from_pretrained(folder)
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": Path("x")}, ckpt)  # a pickled Python object, not plain data
    cfg_path = tmp_path / "cfg.yaml"
    emofer.config.save_config(emofer.load_config("classifier-tiny"), cfg_path)
    assert main(["eval", "--ckpt", str(ckpt), "-c", str(cfg_path), "--out", str(tmp_path / "e")]) == 1
    line = _one_line_error(capsys)
    assert f"{ckpt} is not a safe checkpoint" in line and "weights_only" not in line


@pytest.mark.parametrize(
    "test_set, culprit",
    [
        ("{name: rafdb, split: test}", "root"),  # no root: reported before training, not after
        ("{name: rafdb, root: RAF, split: test}", "test set(s) ['rafdb-test'] hold no samples"),
    ],
    ids=["without-root", "empty"],
)
def test_a_bad_test_set_is_reported_before_training(tmp_path, monkeypatch, capsys, test_set, culprit):
    import lightning

    (tmp_path / "raf" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    started = []
    monkeypatch.setattr(lightning.Trainer, "fit", lambda *a, **k: started.append(1))
    args = ["train", "-c", "classifier-tiny", "data.train=[{name: synthfer, split: train, size: 16}]",
            f"data.test=[{test_set.replace('RAF', str(tmp_path / 'raf'))}]", "--out", str(tmp_path / "run")]
    assert main(args) in (1, 2)
    assert culprit in _one_line_error(capsys) and not started


def test_an_error_re_raised_from_a_data_loader_worker_is_still_one_line():
    from torch._utils import ExceptionWrapper

    from emofer.cli import error_line

    try:
        raise BadSampleError("/data/x.jpg", "corrupt or truncated image (broken data stream)")
    except BadSampleError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadSampleError) as err:
        wrapped.reraise()
    assert "Traceback" in str(err.value)  # what torch hands back: the worker's traceback as the message
    assert error_line(err.value) == "/data/x.jpg: corrupt or truncated image (broken data stream)"
