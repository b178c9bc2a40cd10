"""Video decoding with PyAV and frame-index sampling (uniform with jitter, LLaMA-VID's frame rate)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import ToTensor

from emofer.data import BadSampleError
from emofer.data.pipeline import SampleProcessor
from emofer.data.video import fps_indices, read_video, uniform_indices


def _write(path: Path, n: int = 10, fps: int = 10, **options: str) -> Path:
    """A clip whose frame ``i`` is a flat grey of value ``25 * i`` (so a frame names its own index)."""
    with av.open(str(path), "w", options=options) as c:
        stream = c.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 25 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


def _index(img: Image.Image) -> int:
    return int(round(np.asarray(img, dtype=np.float32).mean() / 25))


def test_uniform_indices_centre_in_eval_and_jitter_within_segments_in_train():
    assert uniform_indices(10, 4) == [1, 3, 6, 8]
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]  # short clips repeat frames
    rng = np.random.default_rng(0)
    draws = [uniform_indices(10, 4, rng) for _ in range(50)]
    for idx in draws:
        assert all(lo <= i < hi for i, lo, hi in zip(idx, [0, 2, 5, 7], [3, 5, 8, 10], strict=True))
    assert len({tuple(d) for d in draws}) > 5


def test_fps_indices_follow_llama_vid_and_cap_at_max_frames():
    assert fps_indices(100, video_fps=25.0, fps=1.0) == [0, 25, 50, 75]
    assert fps_indices(100, video_fps=30.0, fps=2.0) == list(range(0, 100, 15))
    assert fps_indices(100, video_fps=25.0, fps=5.0, max_frames=4) == [10, 35, 60, 85]


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_read_video_decodes_the_sampled_frames(tmp_path, ext):
    path = _write(tmp_path / f"clip.{ext}")
    assert [_index(f) for f in read_video(path, num_frames=4)] == [1, 3, 6, 8]
    frames = read_video(path, num_frames=4, train=True, rng=np.random.default_rng(1))
    assert len(frames) == 4 and all(f.size == (32, 32) and f.mode == "RGB" for f in frames)
    assert [_index(f) for f in read_video(path, num_frames=8, frame_sampling="fps", fps=2.0)] == [0, 5]


def test_a_clip_shorter_than_its_header_is_sampled_over_what_decodes(tmp_path):
    data = _write(tmp_path / "full.mp4", movflags="faststart").read_bytes()  # header first, then frames
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    frames = read_video(cut, num_frames=4)
    assert len(frames) == 4 and _index(frames[0]) == 0 and _index(frames[-1]) < 9


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not a video at all" * 50])
def test_corrupt_video_names_the_file(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(BadSampleError, match=r"bad\.mp4: (cannot decode video|no decodable|no video stream)") as err:
        read_video(path, 4)
    assert err.value.__suppress_context__  # no PyAV traceback chained behind our message


def test_truncated_and_missing_videos_name_the_file(tmp_path):
    data = _write(tmp_path / "full.mp4").read_bytes()  # index at the end: a cut file cannot be opened
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"cut\.mp4: "):
        read_video(tmp_path / "cut.mp4", 4)
    with pytest.raises(BadSampleError, match=r"gone\.avi: file not found"):
        read_video(tmp_path / "gone.avi", 4)


def test_processor_reads_video_files_and_frame_folders(tmp_path):
    path = _write(tmp_path / "clip.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (16, 16), (25 * i,) * 3).save(folder / f"{i:05d}.png")
    frames = sorted(str(p) for p in folder.iterdir())
    proc = SampleProcessor((ToTensor(), None), num_frames=4)
    classes = ["neutral", "happiness"]
    item = proc({"id": "a", "media": str(path), "label": 1, "classes": classes})
    assert item["pixels"].shape == (4, 3, 32, 32)
    assert item["question"].startswith("What is the facial expression of the person in the video?")
    clip = proc({"id": "b", "media": frames, "label": 0, "classes": classes})
    assert clip["pixels"].shape == (4, 3, 16, 16)
    assert [round(float(f.mean()) * 255 / 25) for f in clip["pixels"]] == [1, 3, 6, 8]
