"""LLaVA-style projectors: every visual token mapped to the LLM width, one to one.

``mlp2x-gelu`` is LLaVA-1.5's ``mlp2x_gelu`` projector (Linear → GELU →
Linear), ``linear`` is LLaVA-1.0's single linear layer. Neither uses the face
prior or the instruction; both keep all ``N`` visual tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion._blocks import mlp2x_gelu
from emofer.fusion.base import Fusion, FusionSpec


class _TokenProjector(Fusion):
    def __init__(self, spec: FusionSpec, proj: nn.Module) -> None:
        super().__init__(spec)
        self.proj = proj
        self.num_output_tokens = spec.num_visual_tokens

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.proj(visual)


@FUSIONS.register("mlp2x-gelu")
class MLP2xGELU(_TokenProjector):
    """LLaVA-1.5's two-layer GELU MLP over all visual tokens (``N`` tokens out).

    Args:
        spec: the neighbours' dims (``visual_dim`` in, ``out_dim`` out).

    Example:
        >>> fusion = MLP2xGELU(FusionSpec(visual_dim=32, num_visual_tokens=16, out_dim=64))
        >>> fusion(torch.randn(2, 16, 32)).shape
        torch.Size([2, 16, 64])
    """

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__(spec, mlp2x_gelu(spec.visual_dim, spec.out_dim))


@FUSIONS.register("linear")
class LinearProjector(_TokenProjector):
    """LLaVA-1.0's linear projection of all visual tokens (``N`` tokens out).

    Args:
        spec: the neighbours' dims (``visual_dim`` in, ``out_dim`` out).

    Example:
        >>> fusion = LinearProjector(FusionSpec(visual_dim=32, num_visual_tokens=16, out_dim=64))
        >>> fusion(torch.randn(2, 16, 32)).shape
        torch.Size([2, 16, 64])
    """

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__(spec, nn.Linear(spec.visual_dim, spec.out_dim))
