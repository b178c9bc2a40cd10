"""The contracts parts share: what a face prior hands to a fusion, and the label sets and
landmark geometry both sides read.

This module sits in the core layer (see ``[tool.importlinter]`` in pyproject.toml):
encoders, fusion, llm and data all import it and never each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

AGE_LABELS = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
GENDER_LABELS = ["male", "female"]
RACE_LABELS = ["White", "Black", "Indian", "Asian", "Others"]
ATTRIBUTE_LABELS = {"age": AGE_LABELS, "gender": GENDER_LABELS, "race": RACE_LABELS}
"""FaceXFormer's attribute classes, in its index order (age 8 bins, gender 2, race 5)."""


@dataclass
class FacePriorOutput:
    """What a face-prior network (a :class:`~emofer.encoders.FacePrior`) knows about a face.

    Attributes:
        global_feat: ``[B,Dg]`` face embedding.
        local_feat: ``[B,L,Dl]`` landmark-level (or region) features.
        landmarks: ``[B,L,2]`` coordinates in ``[-1,1]`` (x, y), or None.
        attributes: ``{name: logits [B,C]}``, e.g. ``age``, ``gender``, ``race``.
        task_tokens: optional ``[B,K,Dt]`` decoder task tokens.
    """

    global_feat: torch.Tensor
    local_feat: torch.Tensor
    landmarks: torch.Tensor | None = None
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    task_tokens: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FacePriorOutput:
        """Applies ``fn`` to every tensor (reshape for video, detach, move)."""
        return FacePriorOutput(
            global_feat=fn(self.global_feat),
            local_feat=fn(self.local_feat),
            landmarks=None if self.landmarks is None else fn(self.landmarks),
            attributes={k: fn(v) for k, v in self.attributes.items()},
            task_tokens=None if self.task_tokens is None else fn(self.task_tokens),
        )


FacePriors = FacePriorOutput
"""Deprecated name of :class:`FacePriorOutput` (it differed from ``FacePrior``, the network, by one letter)."""


def landmarks_to_pixels(landmarks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[-1,1]`` landmarks (``align_corners=False``) to pixel coordinates of a ``width x height`` image.

    -1 and 1 are the outer edges of the image and pixel centres sit at
    integer coordinates (FaceXFormer's ``denorm_points`` convention).
    """
    scale = landmarks.new_tensor([width, height])
    return ((landmarks + 1) * scale - 1) / 2


def pixels_to_landmarks(points: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel coordinates to ``[-1,1]`` landmarks; the inverse of :func:`landmarks_to_pixels`."""
    scale = points.new_tensor([width, height])
    return (2 * points + 1) / scale - 1
