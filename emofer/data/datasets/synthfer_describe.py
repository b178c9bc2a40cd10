"""SynthFER-Describe: questions about SynthFER faces that are *not* the expression task.

The tiny base MLLM of the quickstart (the stand-in for LLaMA-VID, see
:mod:`emofer.base_model`) is pretrained on these: for every SynthFER face,
one question per task about what SynthFER labels exactly besides the
expression — gender, age group, ethnicity, which way the head is turned and
how it is tilted. The face is drawn with some expression (SynthFER draws
every face with one), but no sample carries the expression: no expression
label, no expression word in a question or an answer. The questions follow
the form of FERID's category instruction (options in braces), so the base
learns to read the visual tokens and to answer with one of the listed
options, not which expression a face shows.

Example:
    >>> ds = SynthFERDescribe("val", size=2)
    >>> len(ds), ds[0]["question"].startswith("Is the person"), ds[0]["answer"] in ds[0]["classes"]
    (10, True, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from emofer.contracts import AGE_LABELS
from emofer.data import DATASETS
from emofer.data.datasets.synthfer import SPLITS, SynthFER

GENDERS = ("man", "woman")
RACES = ("white", "black", "indian", "asian", "other")
YAW = ("left", "front", "right")
ROLL = ("counter-clockwise", "upright", "clockwise")
YAW_FRONT_DEG, ROLL_UPRIGHT_DEG = 5.0, 4.0
"""Head turns (yaw) and tilts (roll) smaller than these many degrees count as ``front`` / ``upright``."""

TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gender": ("Is the person in the image a man or a woman?", GENDERS),
    "age": ("How old is the person in the image?", tuple(AGE_LABELS)),
    "race": ("What is the ethnicity of the person in the image?", RACES),
    "yaw": ("Which way is the head in the image turned, as the camera sees it?", YAW),
    "roll": ("Which way is the head in the image tilted, as the camera sees it?", ROLL),
}
"""Task -> (question, its options). Each question lists its options in braces, shuffled per sample."""

ANSWERS: tuple[str, ...] = tuple(dict.fromkeys(a for _, options in TASKS.values() for a in options))
"""Every answer of every task, once: the data set's ``classes`` (the candidates of scoring)."""

_SALT = 0xDE5C


def _three_way(angle: float, threshold_deg: float, words: tuple[str, str, str]) -> str:
    """``words[0]`` below ``-threshold``, ``words[2]`` above it, ``words[1]`` in between."""
    if abs(angle) < math.radians(threshold_deg):
        return words[1]
    return words[2] if angle > 0 else words[0]


def answers(sample: dict[str, Any]) -> dict[str, str]:
    """The true answer of every task for one SynthFER image sample (from its attributes and pose).

    A positive yaw moves the nose towards the image's right (``right``); a
    positive roll lowers the face's image-right side (``clockwise``).
    """
    attrs = sample["attributes"]
    _pitch, yaw, roll = (float(v) for v in sample["pose"])
    return {
        "gender": GENDERS[attrs["gender"]],
        "age": AGE_LABELS[attrs["age"]],
        "race": RACES[attrs["race"]],
        "yaw": _three_way(yaw, YAW_FRONT_DEG, YAW),
        "roll": _three_way(roll, ROLL_UPRIGHT_DEG, ROLL),
    }


@DATASETS.register("synthfer-describe")
class SynthFERDescribe(Dataset):
    """SynthFER images with one question per non-expression task (gender, age, race, yaw, roll).

    Sample ``i`` asks task ``i % 5`` about face ``i // 5`` of the SynthFER
    split, so every face is asked every question once per epoch.

    Args:
        split: SynthFER's ``train``, ``val`` or ``test`` split.
        size: faces (default: the split's size); the data set has ``5 * size`` samples.
        seed: SynthFER's seed.
        image_size: image side in pixels.
        difficulty: SynthFER's difficulty.
        tasks: the tasks asked (default all, in :data:`TASKS`'s order).
        cache: keep rendered faces in memory (SynthFER's ``cache``).

    A sample is ``{"id", "media_id" (the face's SynthFER id), "image", "question", "answer", "label" (the answer's
    index in ``classes``), "classes" (the asked tasks' options: :data:`ANSWERS`
    for all tasks), "task"}``: no expression label, landmarks, attributes or
    intensity. A test set of one task (``tasks: [gender]``) scores the answer
    among that task's options only.
    """

    classes = ANSWERS

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        image_size: int = 64,
        difficulty: float = 0.5,
        tasks: list[str] | tuple[str, ...] | None = None,
        cache: bool | None = None,
    ) -> None:
        self.tasks = tuple(tasks) if tasks is not None else tuple(TASKS)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"synthfer-describe: tasks must be among {list(TASKS)}, got {list(self.tasks)}")
        self.faces = SynthFER(split, size=size, seed=seed, image_size=image_size, difficulty=difficulty, cache=cache)
        self.split = split
        self.seed = seed
        self.video = False
        self.classes = tuple(dict.fromkeys(a for t in self.tasks for a in TASKS[t][1]))
        every = self.tasks == tuple(TASKS)
        self.name = f"synthfer-describe-{split}" + ("" if every else "-" + "+".join(self.tasks))

    def __len__(self) -> int:
        return len(self.faces) * len(self.tasks)

    @property
    def fixed_media(self) -> bool:
        """SynthFER's :attr:`~emofer.data.datasets.synthfer.SynthFER.fixed_media` (rendered faces kept)."""
        return self.faces.fixed_media

    def label(self, index: int) -> int:
        """The index in ``classes`` of sample ``index``'s answer (renders the face)."""
        return self.classes.index(self[index]["answer"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        face, task = divmod(index, len(self.tasks))
        name = self.tasks[task]
        sample = self.faces[face]
        question, options = TASKS[name]
        rng = np.random.default_rng([_SALT, self.seed, SPLITS[self.split][0], index])
        shuffled = [options[i] for i in rng.permutation(len(options))]
        answer = answers(sample)[name]
        return {
            "id": f"{self.name}-{face:05d}-{name}",
            "media_id": sample["id"],  # the face: every task's sample shows the same image
            "image": sample["image"],
            "question": f"{question} Choose one from the following options: {{{', '.join(shuffled)}}}.",
            "answer": answer,
            "label": self.classes.index(answer),
            "classes": list(self.classes),
            "task": name,
        }

    def __repr__(self) -> str:
        return f"SynthFERDescribe({self.split!r}, {len(self.faces)} faces x {len(self.tasks)} tasks)"
