"""SynthFER samples: one random face (or expression clip) from a random generator and a class.

The random draws happen in a fixed order from one ``numpy`` generator, so a
sample is a pure function of the generator's seed, the class and the knobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from emofer.data.synth.geometry import Draws, Expression, Pose, sample_identity
from emofer.data.synth.render import render, sample_scene
from emofer.labels import BASIC7


def intensity_range(difficulty: float) -> tuple[float, float]:
    """Range of expression intensities sampled for non-neutral faces at a difficulty.

    At the default difficulty 0.5 this is ``[0.6, 1.0]``: below about 0.5 some
    classes (happiness or sadness against neutral) stop being tellable apart
    at 64 px, so the default stays above it.
    """
    return (max(0.05, 0.9 - 0.6 * difficulty), 1.0)


def _sample_pose(r: Draws, size: int, difficulty: float) -> Pose:
    deg = math.pi / 180.0
    shift = (0.03 + 0.07 * difficulty) * size
    return Pose(
        yaw=r.sym() * (6 + 26 * difficulty) * deg,
        pitch=r.sym() * (3 + 12 * difficulty) * deg,
        roll=r.sym() * (4 + 22 * difficulty) * deg,
        scale=size * 0.33 * (1.0 + r.sym() * (0.04 + 0.12 * difficulty)),
        cx=size / 2 + r.sym() * shift,
        cy=size * 0.45 + r.sym() * shift,
    )


@dataclass
class FaceSample:
    """A rendered SynthFER sample: frames (one for an image) and what is known about them."""

    frames: list[Image.Image]
    landmarks: np.ndarray  # [T,68,2] output pixels
    poses: np.ndarray  # [T,3] pitch, yaw, roll in radians
    intensities: np.ndarray  # [T]
    age: int
    gender: int
    race: int


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def intensity_curve(r: Draws, num_frames: int, apex: float, offset: bool) -> list[float]:
    """Per-frame intensities of a clip: neutral, onset, apex and (optionally) offset."""
    if num_frames == 1:
        return [apex]
    start, peak, release = r.uniform(0.05, 0.3), r.uniform(0.45, 0.65), r.uniform(0.75, 0.85)
    out = []
    for i in range(num_frames):
        t = i / (num_frames - 1)
        v = _smoothstep((t - start) / (peak - start))
        if offset:
            v *= 1.0 - 0.5 * _smoothstep((t - release) / (1.0 - release))
        out.append(apex * v)
    return out


def make_sample(
    rng: np.random.Generator,
    label: int,
    difficulty: float = 0.5,
    size: int = 64,
    num_frames: int = 1,
    offset: bool = False,
) -> FaceSample:
    """Draws one SynthFER face (``num_frames == 1``) or clip with head motion.

    Args:
        rng: the sample's own generator.
        label: index into SynthFER's classes (:data:`emofer.labels.BASIC7`).
        difficulty: 0 (easy) to 1 (hard); scales intensity range and every nuisance.
        size: output side in pixels.
        num_frames: frames of a clip (1 for a still image).
        offset: let clips relax after the apex.
    """
    name = BASIC7[label]
    ident = sample_identity(rng, difficulty)
    scene = sample_scene(rng, difficulty)
    r = Draws(rng, 24)
    lo, hi = intensity_range(difficulty)
    apex = 0.0 if name == "neutral" else r.uniform(lo, hi)
    pose0 = _sample_pose(r, size, difficulty)
    curve = intensity_curve(r, num_frames, apex, offset and r.uniform() < 0.5)
    pose1 = pose0
    if num_frames > 1:
        drift = _sample_pose(r, size, difficulty * 0.5)
        pose1 = Pose(pose0.yaw + drift.yaw, pose0.pitch + drift.pitch, pose0.roll + drift.roll, pose0.scale,
                     pose0.cx + (drift.cx - size / 2) * 0.5, pose0.cy + (drift.cy - size * 0.45) * 0.5)
    noise0 = r.index(1 << 16)
    frames, lms, poses = [], [], []
    for t in range(num_frames):
        pose = pose0.lerp(pose1, t / max(1, num_frames - 1))
        img, lm = render(ident, Expression(name, curve[t]), pose, scene, size, noise0 + t)
        frames.append(img)
        lms.append(lm)
        poses.append((pose.pitch, pose.yaw, pose.roll))
    return FaceSample(
        frames=frames,
        landmarks=np.stack(lms),
        poses=np.asarray(poses, dtype=np.float32),
        intensities=np.asarray(curve, dtype=np.float32),
        age=ident.age,
        gender=ident.gender,
        race=ident.race,
    )
