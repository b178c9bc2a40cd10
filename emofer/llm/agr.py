"""The age-gender-race (AGR) sentence EMO-LLaMA places before the instruction.

The attributes enter the LLM as text, not vectors: the face prior's (or the
ground-truth) age, gender and race become one sentence such as
"The person appears to be a woman aged 20-29, Asian.".
"""

from __future__ import annotations

import torch

from emofer.contracts import AGE_LABELS, ATTRIBUTE_LABELS, GENDER_LABELS, RACE_LABELS

__all__ = ["AGE_LABELS", "ATTRIBUTE_LABELS", "GENDER_LABELS", "RACE_LABELS", "agr_sentences"]

_GENDER_NOUNS = {"male": "a man", "female": "a woman"}
_RACE_WORDS = {"Others": "of another ethnicity"}


def _indices(value: torch.Tensor) -> torch.Tensor:
    """Logits ``[B,C]`` to class indices; indices ``[B]`` pass through."""
    return value.argmax(dim=-1) if value.dim() == 2 else value.long()


def agr_sentences(
    attributes: dict[str, torch.Tensor],
    labels: dict[str, list[str]] | None = None,
    template: str = "The person appears to be {gender} aged {age}, {race}.",
) -> list[str]:
    """One AGR sentence per sample.

    Args:
        attributes: ``{"age"|"gender"|"race": logits [B,C] or indices [B]}``;
            an index of -1 (unknown) leaves that part out of the sentence.
        labels: class names per attribute (defaults to FaceXFormer's).
        template: a ``str.format`` template with ``{age}``, ``{gender}``, ``{race}``.

    Example:
        >>> agr_sentences({"age": torch.tensor([2]), "gender": torch.tensor([1]), "race": torch.tensor([3])})
        ['The person appears to be a woman aged 20-29, Asian.']
    """
    labels = labels or ATTRIBUTE_LABELS
    missing = [k for k in ("age", "gender", "race") if k not in attributes]
    if missing:
        raise KeyError(f"age-gender-race prompt needs attributes {missing}; got {sorted(attributes)}")
    idx = {k: _indices(attributes[k]).tolist() for k in ("age", "gender", "race")}
    out = []
    for i in range(len(idx["age"])):
        words = {}
        for key in ("age", "gender", "race"):
            j = idx[key][i]
            name = labels[key][j] if 0 <= j < len(labels[key]) else "unknown"
            if key == "gender":
                name = _GENDER_NOUNS.get(name, "a person") if name != "unknown" else "a person"
            elif key == "race":
                name = _RACE_WORDS.get(name, name) if name != "unknown" else "of unknown ethnicity"
            elif name == "unknown":
                name = "an unknown age"
            words[key] = name
        out.append(template.format(**words))
    return out
