"""emofer's canonical expression names and the class orders used across the project."""

from __future__ import annotations

CANONICAL: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
    "anxiety",
    "helplessness",
    "disappointment",
)
"""Every expression name emofer knows, lower-case."""

BASIC7: tuple[str, ...] = CANONICAL[:7]
"""The seven basic expressions in SynthFER's class order."""

FERID7: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""The option order of EMO-LLaMA's FERID category instruction (RAF-DB's order)."""


def check_canonical(names: list[str] | tuple[str, ...]) -> None:
    """Raises ValueError naming any class that is not a canonical expression name."""
    bad = [n for n in names if n not in CANONICAL]
    if bad:
        raise ValueError(f"unknown expression name(s) {bad}; canonical names are {list(CANONICAL)}")
