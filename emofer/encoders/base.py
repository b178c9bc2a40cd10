"""Base classes of the vision-encoder and face-prior contracts.

A neighbour wires itself from the dims these classes expose, so no dim is
ever hard-coded in a config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from emofer.contracts import FacePriorOutput
from emofer.part import Part, abstract_attribute


class VisionEncoder(Part):
    """Pixels ``[B,3,H,W]`` to tokens ``[B,N,D]``.

    Subclasses set ``embed_dim``, ``num_tokens``, ``image_size``, ``mean`` and
    ``std`` (a part that lacks one fails when built, naming it) and implement
    :meth:`forward` and :meth:`transform`.
    """

    embed_dim: int = abstract_attribute("width D of the tokens [B,N,D]")
    num_tokens: int = abstract_attribute("number N of tokens per image")
    image_size: int = abstract_attribute("side of the square input in pixels")
    mean: tuple[float, float, float] = abstract_attribute("per-channel normalisation mean")
    std: tuple[float, float, float] = abstract_attribute("per-channel normalisation std")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, train: bool = False) -> Callable:
        """The preprocessing (PIL image to tensor) that matches the weights."""
        raise NotImplementedError  # pragma: no cover - abstract


class FacePrior(Part):
    """A face-analysis network: pixels to :class:`FacePriorOutput`.

    Subclasses set ``global_dim``, ``local_dim``, ``num_local``,
    ``attribute_labels`` (``{attribute: [class names]}``), ``image_size``
    (a part that lacks one fails when built, naming it), optionally
    ``task_token_dim``/``num_task_tokens``, and implement :meth:`forward` and
    :meth:`transform`.
    """

    global_dim: int = abstract_attribute("width Dg of global_feat [B,Dg]")
    local_dim: int = abstract_attribute("width Dl of local_feat [B,L,Dl]")
    num_local: int = abstract_attribute("number L of local features")
    image_size: int = abstract_attribute("side of the square face crop in pixels")
    attribute_labels: dict[str, list[str]] = abstract_attribute("{attribute: [class names]} it predicts")
    num_task_tokens: int = 0
    task_token_dim: int = 0

    def forward(self, pixels: torch.Tensor) -> FacePriorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, train: bool = False) -> Callable:
        """The preprocessing (PIL image to tensor) that matches the weights."""
        raise NotImplementedError  # pragma: no cover - abstract
