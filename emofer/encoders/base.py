"""Base classes of the vision-encoder and face-prior contracts.

A neighbour wires itself from the dims these classes expose, so no dim is
ever hard-coded in a config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from emofer.contracts import FacePriorOutput


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


class FacePrior(_Freezable):
    """A face-analysis network: pixels to :class:`FacePriorOutput`.

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

    def forward(self, pixels: torch.Tensor) -> FacePriorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, train: bool = False) -> Callable:
        """The preprocessing (PIL image to tensor) that matches the weights."""
        raise NotImplementedError  # pragma: no cover - abstract
