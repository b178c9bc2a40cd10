"""SynthFER: procedurally drawn faces, emofer's built-in default data set (no files, no downloads)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from emofer.data import DATASETS
from emofer.data.synth.faces import FaceSample, make_sample
from emofer.labels import BASIC7

SPLITS = {"train": (0, 7000), "val": (1, 700), "test": (2, 1400)}
"""Split -> (seed stream, default size). Streams are disjoint, so no face is in two splits."""

_SALT = 0x5F3E_FACE

CLASS_DISTRIBUTIONS: dict[str, dict[str, int]] = {
    # RAF-DB's basic-expression test split (3,068 images; Li et al., CVPR 2017)
    "rafdb": {
        "surprise": 329, "fear": 74, "disgust": 160, "happiness": 1185, "sadness": 478, "anger": 162, "neutral": 680,
    },
}
"""Class counts of real data sets that a SynthFER split can follow (``class_distribution``)."""


def class_counts(distribution: str | dict[str, float], size: int, classes: tuple[str, ...] = BASIC7) -> list[int]:
    """Samples per class (in ``classes`` order) for ``size`` samples following ``distribution``.

    ``distribution`` is a name in :data:`CLASS_DISTRIBUTIONS` or class -> weight;
    counts are rounded by largest remainders, so they sum to ``size``.
    """
    if isinstance(distribution, str):
        if distribution not in CLASS_DISTRIBUTIONS:
            raise ValueError(
                f"synthfer: unknown class_distribution {distribution!r}; known: {sorted(CLASS_DISTRIBUTIONS)}"
            )
        distribution = CLASS_DISTRIBUTIONS[distribution]
    weights = dict(distribution)
    unknown = sorted(set(weights) - set(classes))
    if unknown or any(float(w) < 0 for w in weights.values()) or not sum(weights.values()):
        raise ValueError(
            f"synthfer: class_distribution maps {list(classes)} to non-negative weights, got {dict(weights)}"
        )
    total = float(sum(weights.values()))
    quotas = [size * float(weights.get(c, 0)) / total for c in classes]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(classes)), key=lambda i: counts[i] - quotas[i])
    for i in order[: size - sum(counts)]:
        counts[i] += 1
    return counts


@DATASETS.register("synthfer")
class SynthFER(Dataset):
    """Procedural synthetic faces: 7 expressions, exact 68 landmarks, age/gender/race; images or clips.

    Each sample is a pure function of ``(seed, split, index)`` and is drawn
    on the fly. Classes are balanced (``label = index % 7``) unless
    ``class_distribution`` makes the split follow a real data set's class
    frequencies (then UAR and WAR differ as on real data). Expressions are
    drawn through brows, eyes, mouth and nose wrinkles at a per-sample
    intensity; skin tone (race), hair and face shape (gender), age cues, head
    pose, lighting, clutter, noise and occasional occluders vary. Clips go
    from neutral through onset to apex (``offset`` lets half of them relax
    again) with head motion.

    Args:
        split: ``train``, ``val`` or ``test`` (disjoint seed streams).
        size: number of samples (default 7,000 / 700 / 1,400).
        seed: the data set's seed.
        image_size: output side in pixels (drawn at twice that and downsampled).
        num_frames: 1 for still images, T > 1 for clips.
        difficulty: 0 (easy) to 1 (hard). Scales every nuisance and the
            intensity range: non-neutral intensities are drawn from
            ``[0.9 - 0.6 * difficulty, 1]`` (``[0.6, 1]`` at the default 0.5).
        offset: let clips relax after the apex.
        cache: keep rendered samples in memory (default: on for val/test, off for train).
        class_distribution: None (balanced), a name in :data:`CLASS_DISTRIBUTIONS`
            (``rafdb``: RAF-DB's test split, 39% happiness, 2.4% fear) or
            ``{class: weight}``; the labels are then a fixed shuffle of
            :func:`class_counts` (the same for every run).

    A sample is ``{"id", "image" (PIL) or "frames" (list of PIL), "label",
    "classes", "landmarks" ([68,2] or [T,68,2], output pixels, pixel centres
    at integers), "attributes" ({"age","gender","race"}, FaceXFormer's
    indices), "pose" ([3] or [T,3]: pitch, yaw, roll in radians),
    "intensity" (float, the apex)}``.

    Example:
        >>> ds = SynthFER("test", size=14)
        >>> ds[3]["classes"][ds[3]["label"]]
        'surprise'
    """

    classes = BASIC7

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        image_size: int = 64,
        num_frames: int = 1,
        difficulty: float = 0.5,
        offset: bool = False,
        cache: bool | None = None,
        class_distribution: str | dict[str, float] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"synthfer: split must be one of {list(SPLITS)}, got {split!r}")
        if not 0.0 <= difficulty <= 1.0:
            raise ValueError(f"synthfer: difficulty must be in [0, 1], got {difficulty}")
        if image_size < 16:
            raise ValueError(f"synthfer: image_size must be at least 16, got {image_size}")
        if num_frames < 1:
            raise ValueError(f"synthfer: num_frames must be at least 1, got {num_frames}")
        self.split = split
        self.size = SPLITS[split][1] if size is None else int(size)
        self.seed = seed
        self.image_size = image_size
        self.num_frames = num_frames
        self.difficulty = difficulty
        self.offset = offset
        self.video = num_frames > 1
        self.name = f"synthfer-{split}"
        self._cache: dict[int, FaceSample] | None = {} if (split != "train" if cache is None else cache) else None
        self._labels: list[int] | None = None
        if class_distribution is not None:
            counts = class_counts(class_distribution, self.size, self.classes)
            labels = np.repeat(np.arange(len(self.classes)), counts)
            rng = np.random.default_rng([_SALT, seed, SPLITS[split][0], len(self.classes)])
            self._labels = rng.permutation(labels).tolist()

    def __len__(self) -> int:
        return self.size

    @property
    def fixed_media(self) -> bool:
        """True when rendered faces are kept (``cache``): each index gives the same frames every time,
        so the data pipeline may keep their transformed tensors too."""
        return self._cache is not None

    def label(self, index: int) -> int:
        """The class of sample ``index`` (balanced: ``index % 7``; else from the class distribution)."""
        if self._labels is not None:
            return self._labels[index]
        return index % len(self.classes)

    def labels(self) -> list[int]:
        """Every sample's label, without rendering."""
        return [self.label(i) for i in range(self.size)]

    def render(self, index: int) -> FaceSample:
        """Draws sample ``index`` (from the cache when enabled)."""
        if not 0 <= index < self.size:
            raise IndexError(f"synthfer {self.split}: index {index} out of range for {self.size} samples")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng([_SALT, self.seed, SPLITS[self.split][0], index])
        face = make_sample(rng, self.label(index), self.difficulty, self.image_size, self.num_frames, self.offset)
        if self._cache is not None:
            self._cache[index] = face
        return face

    def __getitem__(self, index: int) -> dict[str, Any]:
        face = self.render(index)
        out: dict[str, Any] = {
            "id": f"{self.name}-{index:05d}",
            "label": self.label(index),
            "classes": list(self.classes),
            "attributes": {"age": face.age, "gender": face.gender, "race": face.race},
            "intensity": float(face.intensities.max()),
        }
        if self.video:
            out.update(frames=list(face.frames), landmarks=face.landmarks, pose=face.poses)
        else:
            out.update(image=face.frames[0], landmarks=face.landmarks[0], pose=face.poses[0])
        return out

    def __repr__(self) -> str:
        kind = f"{self.num_frames}-frame clips" if self.video else "images"
        return (
            f"SynthFER({self.split!r}, {self.size} {kind} of {self.image_size}px, "
            f"seed={self.seed}, difficulty={self.difficulty})"
        )
