"""LLaMA-VID's per-frame tokens: one text-guided context token plus content token(s).

Follows ``token_generation`` of dvlab-research/LLaMA-VID: a Q-Former's query
outputs (instruction-aware) are projected to the visual width and attend over
the frame's patch features through a key projection; the attended features
are averaged over the queries and projected to the LLM width (the *context*
token). The patch features pooled to one token (``mean``) or a ``k×k`` grid
(``grid:k``) go through the ``mlp2x_gelu`` projector (the *content* tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion._blocks import QueryTransformer, Text, mlp2x_gelu
from emofer.fusion.base import Fusion, FusionSpec


def parse_content(content: str) -> int | None:
    """``"mean"`` to None, ``"grid:k"`` to ``k``; anything else is an error."""
    if content == "mean":
        return None
    if content.startswith("grid:"):
        try:
            k = int(content.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ValueError(f"content must be 'mean' or 'grid:k' with k >= 1, got {content!r}")


def patch_grid(num_tokens: int) -> tuple[int, int]:
    """``(leading non-patch tokens, grid side)`` of a square patch grid, optionally after a class token."""
    for skip in (0, 1):
        side = math.isqrt(num_tokens - skip)
        if side > 0 and side * side == num_tokens - skip:
            return skip, side
    raise ValueError(f"{num_tokens} visual tokens form no square patch grid (with or without a class token)")


@FUSIONS.register("llama-vid")
class LlamaVidTokens(Fusion):
    """LLaMA-VID tokens: a text-guided context token and pooled content token(s) per frame.

    Args:
        spec: the neighbours' dims.
        content: ``"mean"`` (one content token, the mean of all visual tokens) or
            ``"grid:k"`` (``k×k`` tokens by adaptive average pooling of the patch
            grid; a leading class token is dropped first).
        context: emit the context token (LLaMA-VID does; off leaves content only).
        text_guided: let the instruction embeddings join the Q-Former's queries.
            Without text at run time (or when the LLM head gives none) the
            learned queries alone form the context token.
        num_queries: Q-Former queries (LLaMA-VID: 32).
        dim: Q-Former width (LLaMA-VID: 768, BERT-base).
        depth: Q-Former blocks (each self-attention + cross-attention + FFN).
        num_heads: Q-Former attention heads.

    Example:
        >>> spec = FusionSpec(visual_dim=32, num_visual_tokens=16, out_dim=48, text_dim=24)
        >>> fusion = LlamaVidTokens(spec, dim=32, depth=1, num_heads=4)
        >>> text = (torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.bool))
        >>> fusion(torch.randn(2, 16, 32), None, text).shape
        torch.Size([2, 2, 48])
    """

    def __init__(
        self,
        spec: FusionSpec,
        content: str = "mean",
        context: bool = True,
        text_guided: bool = True,
        num_queries: int = 32,
        dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
    ) -> None:
        super().__init__(spec)
        self.grid = parse_content(content)
        self.skip = 0
        if self.grid is not None:
            self.skip, side = patch_grid(spec.num_visual_tokens)
            if self.grid > side:
                raise ValueError(
                    f"llama-vid content {content!r}: the {spec.encoder_name} patch grid is only {side}x{side}"
                )
        self.text_guided = text_guided and spec.text_dim is not None
        d_vis = spec.visual_dim
        self.qformer = None
        if context:
            self.qformer = QueryTransformer(
                dim, num_queries, depth, num_heads, context_dim=d_vis,
                text_dim=spec.text_dim if self.text_guided else None,
            )
            self.query_proj = nn.Linear(dim, d_vis)  # LLaMA-VID's vlm_att_projector
            self.key_proj = nn.Linear(d_vis, d_vis)  # vlm_att_key_projector
            self.value_proj = nn.Linear(d_vis, spec.out_dim)  # vlm_att_val_projector
        self.projector = mlp2x_gelu(d_vis, spec.out_dim)  # mm_projector
        self.num_output_tokens = int(context) + (1 if self.grid is None else self.grid**2)

    def context_token(self, visual: torch.Tensor, text: Text | None) -> torch.Tensor:
        """The text-guided context token ``[B,1,out_dim]`` of each frame."""
        queries = self.qformer(visual, text=text if self.text_guided else None)
        text_q = self.query_proj(queries)
        logits = text_q @ self.key_proj(visual).transpose(-1, -2) / visual.shape[-1] ** 0.5
        ctx = (logits.softmax(dim=-1) @ visual).mean(dim=1, keepdim=True)
        return self.value_proj(ctx)

    def content_tokens(self, visual: torch.Tensor) -> torch.Tensor:
        """The pooled content token(s) ``[B,1 or k*k,out_dim]`` of each frame."""
        if self.grid is None:
            pooled = visual.mean(dim=1, keepdim=True)
        else:
            patches = visual[:, self.skip :]
            side = math.isqrt(patches.shape[1])
            fmap = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
            pooled = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
        return self.projector(pooled)

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: Text | None = None,
    ) -> torch.Tensor:
        content = self.content_tokens(visual)
        if self.qformer is None:
            return content
        return torch.cat([self.context_token(visual, text), content], dim=1)
