"""Face detection and the FaceXFormer crop: Haar cascade, 50% margin, counted fallback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from emofer.face_detect import FaceCropper, enlarge_box


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def test_astronaut_has_exactly_one_face(astronaut):
    cropper = FaceCropper()
    faces = cropper.faces(astronaut)
    assert len(faces) == 1
    x, y, w, h = faces[0]
    # Eileen Collins' face: upper middle-left of the 512x512 photograph
    assert 150 < x < 210 and 40 < y < 100 and 70 < w < 130 and 70 < h < 130
    assert cropper.detect(astronaut) == faces[0]


def test_crop_is_the_face_box_enlarged_by_half(astronaut):
    cropper = FaceCropper()
    crop = cropper(astronaut)
    x, y, w, h = cropper.detect(astronaut)
    assert crop.size == (int(x + 1.25 * w) - int(x - 0.25 * w), int(y + 1.25 * h) - int(y - 0.25 * h))
    left, top = int(x - 0.25 * w), int(y - 0.25 * h)
    assert np.array_equal(
        np.asarray(crop), np.asarray(astronaut)[top : top + crop.size[1], left : left + crop.size[0]]
    )
    assert (cropper.found, cropper.fallbacks) == (1, 0)


def test_no_face_falls_back_to_the_whole_image_counted_and_warned_once(caplog):
    blank = Image.new("RGB", (120, 90), (128, 128, 128))
    cropper = FaceCropper()
    with caplog.at_level("WARNING", logger="emofer.face_detect"):
        first, second = cropper(blank), cropper(blank)
    assert first is blank and second is blank
    assert (cropper.found, cropper.fallbacks) == (0, 2)
    warnings = [r for r in caplog.records if "no face found" in r.getMessage()]
    assert len(warnings) == 1


def test_enlarge_box_clamps_to_the_image():
    assert enlarge_box((100, 100, 40, 40), (200, 200)) == (90, 90, 150, 150)
    assert enlarge_box((0, 5, 40, 20), (50, 30)) == (0, 0, 50, 30)
    assert enlarge_box((10, 10, 40, 40), (200, 200), margin=0.0) == (10, 10, 50, 50)


def test_cropper_pickles_for_dataloader_workers_and_takes_arrays(astronaut):
    cropper = FaceCropper()
    cropper(astronaut)
    clone = pickle.loads(pickle.dumps(cropper))
    assert clone.found == 1
    assert clone.detect(np.asarray(astronaut)) == cropper.detect(astronaut)
    assert clone.detect(np.asarray(astronaut.convert("L"))) == cropper.detect(astronaut)


def test_facexformer_transform_can_crop_faces(astronaut):
    import torch

    from emofer.encoders import FACE_PRIORS

    plain = FACE_PRIORS.build({"name": "facexformer-tiny"}).transform(False)
    cropping = FACE_PRIORS.build({"name": "facexformer-tiny", "detect_faces": True}).transform(False)
    torch.testing.assert_close(cropping(astronaut), plain(FaceCropper()(astronaut)))
    assert cropping(astronaut).shape == (3, 64, 64)
