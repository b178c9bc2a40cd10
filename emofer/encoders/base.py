"""Base classes of the vision-encoder and face-prior contracts.

A neighbour wires itself from the dims these classes expose, so no dim is
ever hard-coded in a config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


class _Freezable(nn.Module):
    def freeze(self) -> _Freezable:
        """Stops gradients to every parameter and switches to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> _Freezable:
        """Sets train mode, except that a frozen module stays in eval mode.

        A parent's ``.train()`` (Lightning calls it every epoch) must not turn
        on dropout, stochastic depth or batch-norm updates in a frozen tower.
        """
        return super().train(mode and not self.is_frozen)

    @property
    def is_frozen(self) -> bool:
        """True when no parameter requires gradients (parameter-free modules count as frozen)."""
        return not any(p.requires_grad for p in self.parameters())


class VisionEncoder(_Freezable):
    """Pixels ``[B,3,H,W]`` to tokens ``[B,N,D]``.

    Subclasses set ``embed_dim``, ``num_tokens``, ``image_size``, ``mean`` and
    ``std`` and implement :meth:`forward` and :meth:`transform`.
    """

    embed_dim: int
    num_tokens: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, train: bool = False) -> Callable:
        """The preprocessing (PIL image to tensor) that matches the weights."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass
class FacePriors:
    """What a face-prior network knows about a face.

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

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FacePriors:
        """Applies ``fn`` to every tensor (reshape for video, detach, move)."""
        return FacePriors(
            global_feat=fn(self.global_feat),
            local_feat=fn(self.local_feat),
            landmarks=None if self.landmarks is None else fn(self.landmarks),
            attributes={k: fn(v) for k, v in self.attributes.items()},
            task_tokens=None if self.task_tokens is None else fn(self.task_tokens),
        )


class FacePrior(_Freezable):
    """A face-analysis network: pixels to :class:`FacePriors`.

    Subclasses set ``global_dim``, ``local_dim``, ``num_local``,
    ``attribute_labels`` (``{attribute: [class names]}``), ``image_size``,
    optionally ``task_token_dim``/``num_task_tokens``, and implement
    :meth:`forward` and :meth:`transform`.
    """

    global_dim: int
    local_dim: int
    num_local: int
    image_size: int
    attribute_labels: dict[str, list[str]]
    num_task_tokens: int = 0
    task_token_dim: int = 0

    def forward(self, pixels: torch.Tensor) -> FacePriors:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, train: bool = False) -> Callable:
        """The preprocessing (PIL image to tensor) that matches the weights."""
        raise NotImplementedError  # pragma: no cover - abstract
