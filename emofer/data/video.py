"""Clips: frame-index sampling (uniform T frames, or a frame rate like LLaMA-VID) and PyAV decoding.

Uniform sampling splits a clip into ``T`` equal segments and takes one frame
from each: the middle one in evaluation (deterministic) and a random one in
training (temporal jitter). Frame-rate sampling takes one frame every
``round(video_fps / fps)`` frames, as LLaMA-VID's loader does, and thins the
result uniformly to at most ``max_frames``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from emofer.data.errors import BadSampleError


def uniform_indices(n: int, num_frames: int, rng: np.random.Generator | None = None) -> list[int]:
    """``num_frames`` indices into ``n`` frames, one per equal segment.

    Args:
        n: frames in the clip (> 0).
        num_frames: how many to take; shorter clips repeat frames.
        rng: jitter within each segment (training); None takes segment centres.
    """
    if n <= 0:
        raise ValueError("a clip needs at least one frame")
    edges = np.linspace(0, n, num_frames + 1)
    if rng is None:
        pos = (edges[:-1] + edges[1:]) / 2
    else:
        pos = edges[:-1] + rng.random(num_frames) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(pos), 0, n - 1).astype(int).tolist()


def fps_indices(n: int, video_fps: float, fps: float = 1.0, max_frames: int | None = None) -> list[int]:
    """One frame every ``round(video_fps / fps)`` frames (LLaMA-VID), thinned to ``max_frames``."""
    if n <= 0:
        raise ValueError("a clip needs at least one frame")
    step = max(1, round(video_fps / fps)) if video_fps > 0 and fps > 0 else 1
    idx = list(range(0, n, step))
    if max_frames is not None and len(idx) > max_frames:
        keep = uniform_indices(len(idx), max_frames)
        idx = [idx[i] for i in keep]
    return idx


def sample_indices(
    n: int,
    num_frames: int,
    train: bool,
    rng: np.random.Generator | None,
    frame_sampling: str = "uniform",
    video_fps: float = 25.0,
    fps: float = 1.0,
) -> list[int]:
    """Frame indices by the configured strategy (``uniform`` or ``fps``)."""
    if frame_sampling == "uniform":
        return uniform_indices(n, num_frames, rng if train else None)
    if frame_sampling == "fps":
        return fps_indices(n, video_fps, fps, num_frames)
    raise ValueError(f"frame_sampling must be 'uniform' or 'fps', got {frame_sampling!r}")


def _probe(path: Path) -> tuple[int, float]:
    """(frame count from the container header, average frame rate); count 0 when unknown."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadSampleError(path, "no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0.0)
        return int(stream.frames or 0), rate


def _decode(path: Path, wanted: set[int] | None) -> tuple[dict[int, Image.Image], int]:
    """Decodes frames in order, keeping those in ``wanted`` (all if None, none if empty).

    Stops after the last wanted frame; with an empty set it decodes everything
    (to count the frames). Returns the kept frames and how many were decoded.
    """
    import av

    kept: dict[int, Image.Image] = {}
    stop = max(wanted) if wanted else None
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if wanted is None or count in wanted:
                kept[count] = frame.to_image()
            count += 1
            if stop is not None and count > stop:
                break
    return kept, count


def read_video(
    path: str | os.PathLike[str],
    num_frames: int = 8,
    train: bool = False,
    rng: np.random.Generator | None = None,
    frame_sampling: str = "uniform",
    fps: float = 1.0,
) -> list[Image.Image]:
    """Decodes the sampled frames of a video file (mp4, avi, ...) as RGB images.

    The header's frame count is trusted first; when the file turns out shorter
    (truncated, or a container without a count) the clip is counted by
    decoding and sampled again over the frames that really exist.
    """
    p = Path(path)
    if not p.is_file():
        raise BadSampleError(p, "file not found" if not p.exists() else "not a file")
    import av

    try:
        n, rate = _probe(p)
        frames: dict[int, Image.Image] = {}
        idx: list[int] = []
        if n > 0:
            idx = sample_indices(n, num_frames, train, rng, frame_sampling, rate or 25.0, fps)
            frames, seen = _decode(p, set(idx))
            if seen > max(idx):
                return [frames[i].convert("RGB") for i in idx]
        _, n = _decode(p, set())  # count what is really decodable
        if n == 0:
            raise BadSampleError(p, "no decodable video frames (corrupt or empty file)")
        idx = sample_indices(n, num_frames, train, rng, frame_sampling, rate or 25.0, fps)
        frames, _ = _decode(p, set(idx))
        return [frames[i].convert("RGB") for i in idx]
    except BadSampleError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, KeyError) as err:
        raise BadSampleError(p, f"cannot decode video ({type(err).__name__}: {err})") from None
