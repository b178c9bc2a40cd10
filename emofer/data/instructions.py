"""Instruction records: FERID's category instruction, conversational templates, LLaVA-style JSON.

EMO-LLaMA's category instruction (FERID) asks for one of the data set's
classes with the options listed in braces; in training the option order is
shuffled per sample. Conversational templates ask about the expression in
free form and answer with the facial cues of the class. Records are read and
written in the LLaVA convention (``image`` or ``video`` key, ``<image>``
placeholder in the first human turn).

Example:
    >>> category_question(["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"])
    'What is the facial expression of the person in the image? Choose one from the following options: {surprise, fear, disgust, happiness, sadness, anger, neutral}.'
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emofer.data.errors import AnnotationError, DataError

IMAGE_TOKEN = "<image>"
"""The placeholder LLaVA and LLaMA-VID put where the visual tokens go (for videos too)."""

CATEGORY_TEMPLATE = (
    "What is the facial expression of the person in the {medium}? "
    "Choose one from the following options: {{{options}}}."
)
"""FERID's category instruction; ``medium`` is ``image`` or ``video``."""

INSTRUCTIONS = ("category", "conversation", "mixed")

ADJECTIVES = {
    "neutral": "calm",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
    "fear": "afraid",
    "disgust": "disgusted",
    "anger": "angry",
    "contempt": "contemptuous",
    "anxiety": "anxious",
    "helplessness": "helpless",
    "disappointment": "disappointed",
}

CUES = {
    "neutral": "The face is relaxed: the brows rest, the eyes are normally open and the mouth is closed.",
    "happiness": "The lip corners are pulled up into a smile and the cheeks are raised.",
    "sadness": "The inner brows are raised and the lip corners are pulled down.",
    "surprise": "The brows are raised high, the eyes are wide open and the jaw drops.",
    "fear": "The brows are raised and drawn together, the eyes are wide open and the lips are stretched.",
    "disgust": "The nose is wrinkled and the upper lip is raised.",
    "anger": "The brows are lowered and drawn together, the eyes glare and the lips are pressed.",
    "contempt": "One lip corner is tightened and raised.",
    "anxiety": "The brows are drawn together, the gaze is restless and the lips are pressed.",
    "helplessness": "The inner brows are raised, the eyes look down and the mouth hangs slightly open.",
    "disappointment": "The gaze drops, the lip corners are pulled down and the lips are pressed together.",
}
"""Prototypical facial cues of each class (FACS-style), used by the conversational answers."""

CONVERSATION_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("How does the person in the {medium} feel?", "The person looks {adjective}: {name}."),
    ("Describe the facial expression of the person in the {medium}.", "{cues} The expression is {name}."),
    ("Which emotion does the face in the {medium} show? Answer with one word.", "{name}"),
    ("What emotion is the person in the {medium} expressing, and what gives it away?", "{name}. {cues}"),
)
"""(question, answer) templates of the conversational instructions."""


def category_question(
    classes: Sequence[str], video: bool = False, rng: np.random.Generator | None = None
) -> str:
    """FERID's category instruction over ``classes``; options shuffled when ``rng`` is given."""
    options = list(classes)
    if rng is not None:
        options = [options[i] for i in rng.permutation(len(options))]
    return CATEGORY_TEMPLATE.format(medium="video" if video else "image", options=", ".join(options))


def conversation(name: str, video: bool = False, rng: np.random.Generator | None = None) -> tuple[str, str]:
    """A conversational (question, answer) about an expression; a random template when ``rng`` is given."""
    q, a = CONVERSATION_TEMPLATES[int(rng.integers(len(CONVERSATION_TEMPLATES))) if rng is not None else 0]
    medium = "video" if video else "image"
    return q.format(medium=medium), a.format(name=name, adjective=ADJECTIVES.get(name, name), cues=CUES.get(name, ""))


def make_prompt(
    classes: Sequence[str],
    label: int,
    instruction: str = "category",
    video: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[str, str]:
    """The (question, answer) of one sample.

    Args:
        classes: the data set's canonical class names.
        label: the true class index (-1 only for records that carry their own text).
        instruction: ``category``, ``conversation`` or ``mixed`` (half each, when ``rng`` is given).
        video: word the question for a clip.
        rng: training randomness (option order, template choice); None is deterministic.
    """
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"instruction must be one of {INSTRUCTIONS}, got {instruction!r}")
    if not 0 <= label < len(classes):
        raise ValueError(f"label {label} is out of range for {len(classes)} classes")
    name = classes[label]
    talk = instruction == "conversation" or (instruction == "mixed" and rng is not None and rng.random() < 0.5)
    if talk:
        return conversation(name, video, rng)
    return category_question(classes, video, rng), name


def llava_record(
    id: str, media: str, question: str, answer: str, video: bool = False
) -> dict[str, Any]:
    """One LLaVA-style record: the media path, and a human turn with ``<image>`` then a gpt turn."""
    return {
        "id": id,
        "video" if video else "image": media,
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def write_llava_json(records: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Writes records as one JSON list (atomically)."""
    from emofer.config import atomic_write_text

    atomic_write_text(path, json.dumps(records, indent=1, ensure_ascii=False))
    return Path(path)


def read_llava_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads and checks LLaVA-style records: ``(id, media, video, question, answer)`` per record.

    The question is the first human turn without the ``<image>`` placeholder,
    the answer the first gpt turn after it. A record without media or without
    a human and a gpt turn is an :class:`AnnotationError` naming the file and
    the record's index (its "line").
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"instruction file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise AnnotationError(p, None, f"not a UTF-8 text file ({err.reason}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(p, err.lineno, f"not valid JSON ({err.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise AnnotationError(p, None, "expected a JSON list of records")
    return [_parse_record(p, i, rec) for i, rec in enumerate(data)]


def _parse_record(path: Path, index: int, rec: Any) -> dict[str, Any]:
    where = f"record {index}"
    if not isinstance(rec, dict):
        raise AnnotationError(path, None, f"{where} is not an object")
    video = "video" in rec
    media = rec.get("video", rec.get("image"))
    if not isinstance(media, str) or not media:
        raise AnnotationError(path, None, f"{where} has no 'image' or 'video' path")
    turns = rec.get("conversations")
    if not isinstance(turns, list):
        raise AnnotationError(path, None, f"{where} has no 'conversations' list")
    question = answer = None
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise AnnotationError(path, None, f"{where}: every turn needs 'from' and a string 'value'")
        role = turn.get("from")
        if role == "human" and question is None:
            question = turn["value"].replace(IMAGE_TOKEN, "").strip()
        elif role == "gpt" and question is not None:
            answer = turn["value"].strip()
            break
    if question is None or answer is None:
        raise AnnotationError(path, None, f"{where} needs a human turn followed by a gpt turn")
    return {"id": str(rec.get("id", index)), "media": media, "video": video, "question": question, "answer": answer}


def dataset_records(
    dataset: Any,
    root: str | os.PathLike[str] | None = None,
    instruction: str = "category",
    seed: int | None = 0,
) -> list[dict[str, Any]]:
    """LLaVA records for every sample of a file-backed data set (a ``DATASETS`` adapter).

    Args:
        dataset: yields sample dicts whose ``media`` is a file, a video, or frame paths.
        root: media paths are written relative to it (absolute when None).
        instruction: ``category``, ``conversation`` or ``mixed``.
        seed: shuffles options / picks templates per sample; None keeps the data set's option order.
    """
    out = []
    for i in range(len(dataset)):
        s = dataset[i]
        media = s["media"]
        if isinstance(media, list):
            media = str(Path(media[0]).parent)
        if not isinstance(media, str) or "#" in media:
            raise DataError(f"sample {s['id']}: records need media files on disk (got {media!r})")
        video = bool(getattr(dataset, "video", False))
        rng = np.random.default_rng([seed, i]) if seed is not None else None
        question, answer = make_prompt(s["classes"], s["label"], instruction, video, rng)
        rel = os.path.relpath(media, root) if root is not None else media
        out.append(llava_record(s["id"], rel, question, answer, video))
    return out
