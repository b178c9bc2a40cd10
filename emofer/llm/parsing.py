"""Generated text to a label: lower-case, aliases, exact then phrase match; anything else is invalid.

An answer that names no candidate, or names two different ones, is *invalid*
(``None``) and is counted as such — it is never mapped to a guess.

Example:
    >>> parse_label("Happy.", ["anger", "happiness"])
    'happiness'
    >>> parse_label("The person looks scared.", ["fear", "sadness"])
    'fear'
    >>> parse_label("I cannot tell.", ["fear", "sadness"]) is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ALIASES: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "neutrality", "calm", "expressionless", "no emotion"),
    "happiness": ("happiness", "happy", "joy", "joyful", "glad", "smiling", "delighted"),
    "sadness": ("sadness", "sad", "sorrow", "sorrowful", "unhappy", "upset"),
    "surprise": ("surprise", "surprised", "astonished", "astonishment", "amazed", "shocked"),
    "fear": ("fear", "scared", "afraid", "fearful", "frightened", "terrified"),
    "disgust": ("disgust", "disgusted", "disgusting", "repulsed"),
    "anger": ("anger", "angry", "furious", "rage", "annoyed"),
    "contempt": ("contempt", "contemptuous", "scorn", "disdain"),
    "anxiety": ("anxiety", "anxious", "worried", "nervous"),
    "helplessness": ("helplessness", "helpless"),
    "disappointment": ("disappointment", "disappointed"),
}
"""Words that name each canonical expression (the name itself first)."""

_STRIP = " \t\r\n.,;:!?\"'`()[]{}*"


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(_STRIP)


def _names_of(candidates: Sequence[str]) -> list[tuple[str, str]]:
    """(surface form, candidate) pairs: the candidates themselves first, then their aliases."""
    pairs = [(_normalise(c), c) for c in candidates]
    for c in candidates:
        pairs += [(alias, c) for alias in ALIASES.get(_normalise(c), ()) if alias != _normalise(c)]
    return pairs


def parse_label(text: str, candidates: Sequence[str]) -> str | None:
    """The candidate a generated answer names, or None when it names none or several.

    Args:
        text: the generated answer.
        candidates: the allowed labels (canonical names or any strings).

    Returns:
        One of ``candidates`` (as given) or None for an invalid answer.
    """
    answer = _normalise(text)
    pairs = _names_of(candidates)
    for surface, candidate in pairs:
        if answer == surface:
            return candidate
    found = {
        candidate
        for surface, candidate in pairs
        if surface and re.search(rf"(?<![a-z]){re.escape(surface)}(?![a-z])", answer)
    }
    return found.pop() if len(found) == 1 else None


def invalid_rate(labels: Iterable[str | None]) -> float:
    """The fraction of parsed labels that are invalid (None); 0.0 for no labels."""
    labels = list(labels)
    return sum(label is None for label in labels) / len(labels) if labels else 0.0
