"""Expression names as data sets spell them, mapped to emofer's canonical names."""

from __future__ import annotations

from emofer.labels import CANONICAL

ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "neutrality": "neutral",
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "disgust": "disgust",
    "disgusted": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
    "contemptuous": "contempt",
    "anxiety": "anxiety",
    "anxious": "anxiety",
    "helplessness": "helplessness",
    "helpless": "helplessness",
    "disappointment": "disappointment",
    "disappointed": "disappointment",
}
"""Spellings found in FER label files (any case) to canonical names."""


def canonical_name(name: str) -> str | None:
    """The canonical expression name for a label spelling, or None when unknown."""
    return ALIASES.get(name.strip().lower())


def canonical_classes(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Maps a class list to canonical names; raises ValueError naming any unknown one."""
    out = [canonical_name(n) for n in names]
    bad = [n for n, c in zip(names, out, strict=True) if c is None]
    if bad:
        raise ValueError(f"unknown expression name(s) {bad}; canonical names are {list(CANONICAL)}")
    return tuple(out)  # type: ignore[arg-type]
