"""SynthFER: determinism, balance, expression geometry, exact landmarks, clips, and the export round trip."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import ToTensor

from emofer.cli import main
from emofer.data import DATASETS
from emofer.data.datasets.synthfer import SynthFER
from emofer.data.pipeline import SampleProcessor, crop_bounds
from emofer.data.synth.faces import intensity_range
from emofer.data.synth.geometry import Expression, Pose, landmarks, sample_identity
from emofer.data.synth.render import Scene, render
from emofer.labels import BASIC7


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_samples_are_a_pure_function_of_seed_split_and_index():
    a, b = SynthFER("train", size=14, seed=3), SynthFER("train", size=14, seed=3, cache=True)
    for i in (0, 5, 13):
        assert np.array_equal(_pixels(a[i]["image"]), _pixels(b[i]["image"]))
        assert np.array_equal(a[i]["landmarks"], b[i]["landmarks"])
    assert not np.array_equal(_pixels(a[5]["image"]), _pixels(SynthFER("train", size=14, seed=4)[5]["image"]))
    assert not np.array_equal(_pixels(a[0]["image"]), _pixels(SynthFER("test", size=14, seed=3)[0]["image"]))


def test_splits_are_balanced_and_sized():
    test = SynthFER("test")
    assert len(test) == 1400 and len(SynthFER("train")) == 7000 and len(SynthFER("val")) == 700
    assert set(Counter(test.labels()).values()) == {200}
    assert test.classes == BASIC7 and test[4]["classes"][test[4]["label"]] == "fear"
    s = test[0]
    assert s["image"].size == (64, 64) and s["image"].mode == "RGB" and s["landmarks"].shape == (68, 2)


def test_attributes_use_facexformer_ranges_and_all_values_occur():
    ds = SynthFER("train", size=300)
    seen = {k: set() for k in ("age", "gender", "race")}
    for i in range(len(ds)):
        face = ds.render(i)
        seen["age"].add(face.age)
        seen["gender"].add(face.gender)
        seen["race"].add(face.race)
    assert seen == {"age": set(range(8)), "gender": {0, 1}, "race": set(range(5))}


def test_intensity_follows_difficulty():
    assert intensity_range(0.5) == pytest.approx((0.6, 1.0))
    hard, easy = SynthFER("train", size=70, difficulty=1.0), SynthFER("train", size=70, difficulty=0.0)
    for ds in (hard, easy):
        lo, hi = intensity_range(ds.difficulty)
        for i in range(len(ds)):
            value = ds[i]["intensity"]
            assert value == 0.0 if ds.label(i) == 0 else lo <= value <= hi


def _geometry(name: str) -> np.ndarray:
    ident = sample_identity(np.random.default_rng(7), 0.0)
    ident.rest_brow = ident.rest_corner = 0.0
    return landmarks(ident, Expression(name, 1.0))


def test_each_expression_moves_its_landmarks():
    n = _geometry("neutral")

    def corner_lift(lm):  # lip corners above (+) the lip centre
        return (lm[[62, 66], 1].mean() - lm[[48, 54], 1].mean())

    def gap(lm):
        return lm[66, 1] - lm[62, 1]

    def eye_open(lm):
        return (lm[[40, 41], 1] - lm[[37, 38], 1]).mean()

    def inner_brow_height(lm):  # inner brow ends above the eye line
        return lm[[39, 42], 1].mean() - lm[[21, 22], 1].mean()

    happy, sad, surprise, fear, disgust, anger = (_geometry(c) for c in BASIC7[1:])
    assert corner_lift(happy) > corner_lift(n) + 0.1
    assert corner_lift(sad) < corner_lift(n) - 0.1
    assert inner_brow_height(sad) > inner_brow_height(n) + 0.1
    assert gap(surprise) > gap(n) + 0.2 and eye_open(surprise) > 1.35 * eye_open(n)
    assert eye_open(fear) > 1.3 * eye_open(n) and np.ptp(fear[48:55, 0]) > np.ptp(n[48:55, 0]) + 0.2
    assert n[51, 1] - disgust[51, 1] > 0.08  # upper lip raised
    assert inner_brow_height(anger) < inner_brow_height(n) - 0.1
    assert (anger[22, 0] - anger[21, 0]) < (n[22, 0] - n[21, 0]) - 0.1  # drawn together


def test_landmark_order_is_ibug():
    lm = _geometry("neutral")
    assert lm[8, 1] == lm[:17, 1].max()  # chin is the jaw's lowest point
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eye corners left to right
    assert lm[17, 0] < lm[21, 0] < lm[22, 0] < lm[26, 0]
    assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]
    assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[60, 0] < lm[64, 0]


@pytest.mark.parametrize("roll", [0.0, 0.35])
def test_rendered_jaw_landmarks_lie_on_the_drawn_face_edge(roll):
    ident = sample_identity(np.random.default_rng(11), 0.0)
    scene = Scene(background=(0, 0, 255), clutter=[], gain=1.0, gradient=0.0, light_angle=0.0, noise=0.0,
                  occluder=None)
    size = 128
    img, lm = render(ident, Expression("happiness", 1.0), Pose(0.2, 0.0, roll, size * 0.33, 64, 58), scene, size)
    a = _pixels(img)
    skin = np.asarray(ident.colours["skin"])
    centre = lm[[30, 33]].mean(axis=0)
    for j in range(4, 13):
        out = (lm[j] - centre) / np.linalg.norm(lm[j] - centre)
        inside = np.round(lm[j] - 2.5 * out).astype(int)
        outside = np.round(lm[j] + 2.5 * out).astype(int)
        assert np.abs(a[inside[1], inside[0]] - skin).max() <= 2, j
        assert np.abs(a[outside[1], outside[0]] - skin).max() > 10, j


def test_landmarks_reach_the_batch_in_grid_sample_coordinates():
    ds = SynthFER("test", size=7)
    sample = ds[3]
    item = SampleProcessor((ToTensor(), None))(sample)
    unit = item["landmarks"]  # [1,68,2] in [-1,1]
    assert unit.shape == (1, 68, 2) and unit.abs().max() < 1
    w, h = sample["image"].size
    ramp = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                      indexing="ij")[::-1])[None]  # [1,2,H,W]: channel 0 = x, 1 = y
    got = F.grid_sample(ramp, unit[:, :, None], align_corners=False).squeeze(-1)[0].T
    assert torch.allclose(got, torch.as_tensor(sample["landmarks"]), atol=1e-3)
    box = (14, 10, 36, 40)
    left, top, right, bottom = crop_bounds(box, (w, h))
    assert (left, top) == (5, 0) and (right, bottom) == (59, 60)
    cropped = SampleProcessor((ToTensor(), None), face_crop=True)({**sample, "box": box})
    assert tuple(cropped["pixels"].shape[-2:]) == (bottom - top, right - left)
    got_c = F.grid_sample(ramp[..., : bottom - top, : right - left], cropped["landmarks"][:, :, None],
                          align_corners=False).squeeze(-1)[0].T
    inside = (cropped["landmarks"][0].abs() < 1).all(dim=1)
    expected = torch.as_tensor(sample["landmarks"]) - torch.tensor([left, top], dtype=torch.float32)
    assert inside.sum() > 50 and torch.allclose(got_c[inside], expected[inside], atol=1e-3)


def test_clips_go_from_neutral_to_apex_with_head_motion():
    ds = SynthFER("val", size=14, num_frames=8)
    s = ds[1]  # happiness
    assert len(s["frames"]) == 8 and s["landmarks"].shape == (8, 68, 2) and s["pose"].shape == (8, 3)
    curve = ds.render(1).intensities
    assert curve[0] == 0.0 and curve[-1] == pytest.approx(s["intensity"]) and np.all(np.diff(curve) >= 0)
    assert not np.allclose(s["pose"][0], s["pose"][-1])
    lift = [lm[[62, 66], 1].mean() - lm[[48, 54], 1].mean() for lm in s["landmarks"]]
    assert lift[-1] > lift[0] + 1.0  # pixels: the smile appears
    relaxed = SynthFER("val", size=28, num_frames=8, offset=True)
    curves = [relaxed.render(i).intensities for i in range(7, 28) if relaxed.label(i)]
    assert any(c[-1] < c.max() - 1e-3 for c in curves)  # some clips relax after the apex


def test_synthfer_builds_through_the_registry():
    ds = DATASETS.build({"name": "synthfer", "split": "test", "size": 7, "image_size": 32, "difficulty": 0.2})
    assert isinstance(ds, SynthFER) and ds[0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="difficulty must be in"):
        SynthFER(difficulty=1.5)


def test_cli_synth_round_trips_through_the_rafdb_adapter(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--layout", "rafdb",
                 "--train-size", "14", "--test-size", "7", "--seed", "5"]) == 0
    text = (tmp_path / "EmoLabel" / "list_patition_label.txt").read_text()
    assert not text.endswith("\n") and text.splitlines()[-1].startswith("test_0007.jpg ")
    for split, n in (("train", 14), ("test", 7)):
        raf = DATASETS.build({"name": "rafdb", "root": tmp_path, "split": split})
        syn = SynthFER(split, size=n, seed=5)
        assert [raf.classes[s["label"]] for s in raf] == [syn.classes[lab] for lab in syn.labels()]
        back = np.asarray(Image.open(raf[3]["media"]), dtype=np.int16)
        assert np.abs(back - _pixels(syn[3]["image"])).mean() < 6  # the same face, through JPEG


def test_cli_synth_round_trips_through_the_dfew_adapter(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--layout", "dfew",
                 "--train-size", "7", "--test-size", "7", "--num-frames", "4"]) == 0
    train = DATASETS.build({"name": "dfew", "root": tmp_path, "split": "train", "fold": 1})
    test = DATASETS.build({"name": "dfew", "root": tmp_path, "split": "test", "fold": 1})
    assert [s["id"] for s in test] == [f"{i:05d}" for i in range(8, 15)]
    for ds, split in ((train, "train"), (test, "test")):
        syn = SynthFER(split, size=7, num_frames=4)
        assert [ds.classes[s["label"]] for s in ds] == [syn.classes[lab] for lab in syn.labels()]
        assert len(ds[2]["media"]) == 4


def test_sample_grid_png(tmp_path):
    from emofer.data.synth.grid import save_grid

    out = save_grid(tmp_path / "grid.png", per_class=2, dpi=40)
    img = Image.open(out)
    assert img.size[1] > img.size[0] / 2 and img.mode in ("RGBA", "RGB")


def test_cached_faces_are_transformed_once_and_give_the_same_tensors():
    from emofer.data.pipeline import ItemDataset
    from emofer.encoders import ENCODERS

    encoder = ENCODERS.build({"name": "cnn-tiny", "image_size": 32, "width": 8, "num_blocks": 3})
    calls = Counter()
    train_tf = encoder.transform(True)
    fixed = train_tf.fixed

    def counted(image):
        calls[id(image)] += 1
        return fixed(image)

    train_tf.fixed = counted
    plain = SynthFER("train", size=6, num_frames=3)
    kept = SynthFER("train", size=6, num_frames=3, cache=True)
    assert kept.fixed_media and not plain.fixed_media
    reference = ItemDataset(plain, SampleProcessor((encoder.transform(True), encoder.transform(False)), train=True,
                                                   num_frames=2))
    memoised = ItemDataset(kept, SampleProcessor((train_tf, encoder.transform(False)), train=True, num_frames=2))
    for epoch in range(3):
        for i in range(len(kept)):
            torch.manual_seed(100 * epoch + i)  # the same frame choice, option order and flip on both sides
            a = reference[i]
            torch.manual_seed(100 * epoch + i)
            b = memoised[i]
            assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["face_pixels"], b["face_pixels"])
            assert a["question"] == b["question"]
    assert calls and max(calls.values()) == 1  # every kept frame was resized once, in three epochs
    # the training flip still happens, on the kept tensor
    stills = ItemDataset(SynthFER("train", size=4, cache=True), SampleProcessor((encoder.transform(True), None), train=True))
    upright = encoder.transform(False)(stills.base[0]["image"])
    outs = [stills[0]["pixels"][0] for _ in range(12)]
    assert all(torch.equal(o, upright) or torch.equal(o, upright.flip(-1)) for o in outs)
    assert {torch.equal(o, upright) for o in outs} == {True, False}
    # frames a data set does not keep are transformed every time
    fresh = SampleProcessor((train_tf, None), train=True, num_frames=2)
    calls.clear()
    for _ in range(2):
        fresh(plain[0])
    assert sum(calls.values()) == 4


def test_the_kept_transformed_frames_stop_at_the_memory_budget(monkeypatch):
    import emofer.data.pipeline as pipeline
    from emofer.encoders import ENCODERS

    encoder = ENCODERS.build({"name": "cnn-tiny", "image_size": 16, "width": 8, "num_blocks": 2})
    one = 3 * 16 * 16 * 4  # bytes of one transformed frame
    monkeypatch.setattr(pipeline, "MEMO_BYTES", 3 * one)
    processor = SampleProcessor((encoder.transform(False), None))
    faces = pipeline.ItemDataset(SynthFER("val", size=6, cache=True), processor)
    first = [faces[i]["pixels"] for i in range(6)]
    assert len(processor._memo) == 3  # the budget: three frames kept, the others transformed each time
    assert all(torch.equal(a, faces[i]["pixels"]) for i, a in enumerate(first))
