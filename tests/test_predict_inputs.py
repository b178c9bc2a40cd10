"""What `predict`/`classify` take: photos (face cropped), frame folders, globs and folders, --top in JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import emofer
from emofer.cli import main
from emofer.commands.predict import expand
from emofer.face_detect import FaceCropper


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512 x 512, one face


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return emofer.build_model(emofer.load_config("classifier-tiny")).eval()


def test_photos_larger_than_the_input_are_cropped_to_the_face(model, astronaut):
    face = FaceCropper()(astronaut)
    assert face.size[0] < astronaut.size[0]
    auto = model.classify(astronaut, mode="classifier")[0]
    by_hand = model.classify(face, mode="classifier", face_crop=False)[0]
    whole = model.classify(astronaut, mode="classifier", face_crop=False)[0]
    assert auto.scores == pytest.approx(by_hand.scores, abs=1e-6)
    assert whole.scores != pytest.approx(auto.scores, abs=1e-6)


def test_small_face_crops_are_left_alone(model, astronaut):
    small = astronaut.resize((48, 48))  # within twice the 32-px input: taken as a face crop already
    assert model.classify(small, mode="classifier")[0].scores == pytest.approx(
        model.classify(small, mode="classifier", face_crop=False)[0].scores
    )


def test_a_frame_folder_is_a_clip(model, tmp_path):
    frames = [Image.new("RGB", (40, 40), (60 * i, 100, 200 - 40 * i)) for i in range(4)]
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):
        frame.save(folder / f"{i:03d}.png")
    video = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    from_folder = model.classify(str(folder), mode="classifier", num_frames=4)[0]
    from_tensor = model.classify(video, mode="classifier", num_frames=4)[0]
    assert from_folder.scores == pytest.approx(from_tensor.scores, abs=1e-6)


def test_globs_and_folders_expand_to_inputs(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand([str(tmp_path / "*.png"), str(tmp_path / "a.jpg")]) == [str(tmp_path / "b.png"), str(tmp_path / "a.jpg")]
    assert expand([str(tmp_path)], each=True) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert expand([str(tmp_path)]) == [str(tmp_path)]  # a folder alone is one frame folder
    with pytest.raises(emofer.ConfigError, match=r"no match for: .*\*\.gif"):
        expand([str(tmp_path / "*.gif")])


def test_top_applies_to_json_and_empty_labels_are_refused(model, tmp_path, astronaut, capsys):
    model.save_pretrained(tmp_path / "model")
    astronaut.save(tmp_path / "face.png")
    args = ["predict", str(tmp_path / "face.png"), "--model", str(tmp_path / "model"), "--json"]
    assert main([*args, "--top", "2"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["scores"]) == 2 and list(row["scores"])[0] == row["label"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["scores"]) == len(model.classes)  # JSON without --top: every score
    assert main([*args, "--labels", ""]) == 2
    assert "--labels names no label" in capsys.readouterr().err
