"""A Perceiver / Q-Former resampler: a fixed number of latents read the visual tokens."""

from __future__ import annotations

import torch
from torch import nn

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion._blocks import QueryTransformer, Text
from emofer.fusion.base import Fusion, FusionSpec


@FUSIONS.register("resampler")
class Resampler(Fusion):
    """Perceiver/Q-Former resampler: ``num_queries`` latents over the visual (and face) tokens.

    The visual tokens (and, with ``use_priors``, the face embedding and the
    landmark-level features, each projected to the visual width) are read by
    learned latents through ``depth`` blocks of self-attention, cross-attention
    and FFN, then projected to the LLM width.

    Args:
        spec: the neighbours' dims.
        num_queries: latents (= output tokens).
        dim: the latents' width.
        depth: resampler blocks.
        num_heads: attention heads.
        use_priors: also read the face prior's tokens (the model then needs a prior).
        text_guided: let the instruction embeddings join the latents in
            self-attention; ignored without text.

    Example:
        >>> spec = FusionSpec(visual_dim=32, num_visual_tokens=16, out_dim=48)
        >>> Resampler(spec, num_queries=8, dim=32, depth=1, num_heads=4)(torch.randn(2, 16, 32)).shape
        torch.Size([2, 8, 48])
    """

    def __init__(
        self,
        spec: FusionSpec,
        num_queries: int = 32,
        dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
        use_priors: bool = False,
        text_guided: bool = False,
    ) -> None:
        super().__init__(spec)
        if use_priors and spec.prior is None:
            raise ValueError(
                f"resampler: use_priors=true needs a face prior, but the model has none "
                f"(face_prior: {spec.prior_name})"
            )
        self.requires_prior = use_priors
        self.text_guided = text_guided and spec.text_dim is not None
        d_vis = spec.visual_dim
        if use_priors:
            self.global_proj = nn.Linear(spec.prior.global_dim, d_vis)
            self.local_proj = nn.Linear(spec.prior.local_dim, d_vis)
        self.latents = QueryTransformer(
            dim, num_queries, depth, num_heads, context_dim=d_vis,
            text_dim=spec.text_dim if self.text_guided else None,
        )
        self.out_proj = nn.Linear(dim, spec.out_dim)
        self.num_output_tokens = num_queries

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: Text | None = None,
    ) -> torch.Tensor:
        context = visual
        if self.requires_prior:
            if priors is None:
                raise ValueError("resampler: use_priors=true, but priors=None was passed")
            dtype = self.global_proj.weight.dtype
            face = [
                self.global_proj(priors.global_feat.to(dtype))[:, None],
                self.local_proj(priors.local_feat.to(dtype)),
            ]
            context = torch.cat([visual.to(dtype), *face], dim=1)
        return self.out_proj(self.latents(context, text=text if self.text_guided else None))
