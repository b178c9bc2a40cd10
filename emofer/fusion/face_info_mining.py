"""Face Info Mining (EMO-LLaMA): visual tokens followed by tokens mined from a face prior.

The paper describes the module only in words: global facial information (a
face embedding) and local facial information (landmark-level features) from a
pretrained facial analysis network, aggregated by a Q-Former-style clue
aggregator into tokens for the LLM. The concrete wiring here is our reading:

* *global*: the prior's face embedding, projected to ``k_g`` tokens, plus
  (optionally) the prior decoder's task tokens, one token each;
* *local*: each landmark's feature plus a Fourier encoding of its coordinates
  and a learned landmark-identity embedding, optionally mean-pooled into five
  facial regions by the iBUG-68 index ranges;
* *clue aggregator*: ``num_queries`` learned queries, ``depth`` pre-norm blocks
  of self-attention (shared with the instruction tokens when text-guided, as
  in LLaMA-VID / InstructBLIP), cross-attention over the global and local
  tokens and an FFN, then a linear projection to the LLM width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion._blocks import QueryTransformer, Text
from emofer.fusion.base import Fusion, FusionSpec

IBUG68_REGIONS: dict[str, range] = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}
"""Facial regions as iBUG-68 landmark index ranges (0-based)."""


def fourier_encode(coords: torch.Tensor, num_bands: int) -> torch.Tensor:
    """NeRF-style encoding of coordinates in ``[-1,1]``: ``[..., C]`` to ``[..., C*(1+2*num_bands)]``."""
    freqs = math.pi * 2.0 ** torch.arange(num_bands, device=coords.device, dtype=coords.dtype)
    angles = (coords[..., None] * freqs).flatten(-2)
    return torch.cat([coords, angles.sin(), angles.cos()], dim=-1)


@FUSIONS.register("face-info-mining")
class FaceInfoMining(Fusion):
    """EMO-LLaMA's Face Info Mining: visual tokens plus face-clue tokens from the face prior.

    Output: the visual branch's tokens followed by ``num_queries`` face tokens,
    all ``spec.out_dim`` wide.

    Args:
        spec: the neighbours' dims; needs a face prior (``spec.prior``).
        visual: the visual branch, any registered fusion config (id or
            ``{name: ..., **kwargs}``), built with the same spec; LLaMA-VID
            tokens by default. None leaves the face tokens alone.
        use_global: mine the prior's face embedding.
        use_local: mine the prior's landmark-level features.
        use_task_tokens: add the prior decoder's task tokens to the global
            clues (the prior must expose some).
        k_g: tokens the face embedding is projected to.
        regions: pool the landmark tokens into 5 facial regions (jaw, brows,
            nose, eyes, mouth; needs the 68 iBUG landmarks) instead of
            keeping one token per landmark.
        fourier_bands: frequency bands of the landmark-coordinate encoding
            (skipped when the prior gives no landmarks).
        text_guided: let the instruction embeddings join the aggregator's
            queries in self-attention. Without text (no text at run time, or an
            LLM head that gives none, such as the classifier) the learned
            queries alone aggregate the clues.
        num_queries: the aggregator's learned queries (= face tokens).
        dim: the aggregator's width.
        depth: the aggregator's blocks.
        num_heads: the aggregator's attention heads.

    Example:
        >>> from emofer.fusion.base import PriorSpec
        >>> spec = FusionSpec(32, 16, 48, prior=PriorSpec(global_dim=20, local_dim=12, num_local=68))
        >>> fim = FaceInfoMining(spec, visual={"name": "llama-vid", "dim": 16, "num_heads": 2},
        ...                      num_queries=4, dim=16, depth=1, num_heads=2)
        >>> priors = FacePriorOutput(torch.randn(2, 20), torch.randn(2, 68, 12), torch.rand(2, 68, 2) * 2 - 1)
        >>> fim(torch.randn(2, 16, 32), priors).shape
        torch.Size([2, 6, 48])
    """

    requires_prior = True

    def __init__(
        self,
        spec: FusionSpec,
        visual: str | dict[str, Any] | None = "llama-vid",
        use_global: bool = True,
        use_local: bool = True,
        use_task_tokens: bool = False,
        k_g: int = 4,
        regions: bool = False,
        fourier_bands: int = 8,
        text_guided: bool = True,
        num_queries: int = 32,
        dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
    ) -> None:
        super().__init__(spec)
        if not (use_global or use_local):
            raise ValueError(
                "face-info-mining: use_global and use_local are both off, which leaves no face clues; "
                "turn one on, or use the visual fusion alone (e.g. fusion.name=llama-vid)"
            )
        prior = spec.prior
        if prior is None:
            raise ValueError(
                f"face-info-mining needs a face prior, but the model has none (face_prior: {spec.prior_name}); "
                "set model.face_prior (e.g. facexformer) or pick a fusion without one"
            )
        if use_task_tokens and not use_global:
            raise ValueError("face-info-mining: use_task_tokens adds global clues, so it needs use_global=true")
        if use_task_tokens and prior.num_task_tokens == 0:
            raise ValueError(f"face-info-mining: use_task_tokens=true, but face prior {spec.prior_name!r} exposes no task tokens")
        if regions and use_local and prior.num_local != 68:
            raise ValueError(
                f"face-info-mining: regions=true pools the 68 iBUG landmarks, but face prior "
                f"{spec.prior_name!r} gives {prior.num_local} local features"
            )
        if k_g < 1 and use_global:
            raise ValueError(f"face-info-mining: k_g must be >= 1, got {k_g}")
        self.use_global, self.use_local = use_global, use_local
        self.use_task_tokens, self.regions = use_task_tokens, regions
        self.k_g, self.dim = k_g, dim
        self.text_guided = text_guided and spec.text_dim is not None

        self.visual = None if visual is None else FUSIONS.build(visual, spec=spec)
        if use_global:
            self.global_proj = nn.Linear(prior.global_dim, k_g * dim)
            self.global_type = nn.Parameter(torch.zeros(dim))
            if use_task_tokens:
                self.task_proj = nn.Linear(prior.task_token_dim, dim)
                self.task_type = nn.Parameter(torch.zeros(dim))
        if use_local:
            self.local_proj = nn.Linear(prior.local_dim, dim)
            self.local_index = nn.Parameter(torch.randn(prior.num_local, dim) * 0.02)
            self.coord_proj = nn.Linear(2 * (1 + 2 * fourier_bands), dim)
            self.fourier_bands = fourier_bands
        self.aggregator = QueryTransformer(
            dim, num_queries, depth, num_heads, context_dim=dim,
            text_dim=spec.text_dim if self.text_guided else None,
        )
        self.out_proj = nn.Linear(dim, spec.out_dim)
        visual_tokens = 0 if self.visual is None else self.visual.num_output_tokens
        self.num_output_tokens = visual_tokens + num_queries

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Also loads a base MLLM's visual fusion alone (LLaMA-VID's weights, no face branch).

        EMO-LLaMA starts from LLaMA-VID: the base's fusion weights sit at this
        module's prefix (``fusion.qformer...``) where this module keeps them in
        its visual branch (``fusion.visual.qformer...``); they are moved there,
        and the face branch stays as it is (see ``EmoFERModel.load_weights(missing="keep")``).
        """
        if self.visual is not None:
            visual_keys = set(self.visual.state_dict())
            for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] in visual_keys]:
                moved = f"{prefix}visual.{key[len(prefix):]}"
                if moved not in state_dict:
                    state_dict[moved] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def reads_questions(self) -> bool:
        """True when the visual branch reads the questions as strings (LLaMA-VID's BERT Q-Former)."""
        return self.visual is not None and bool(getattr(self.visual, "reads_questions", False))

    @property
    def num_clue_tokens(self) -> int:
        """How many global + local clue tokens the aggregator reads."""
        prior = self.spec.prior
        n = 0
        if self.use_global:
            n += self.k_g + (prior.num_task_tokens if self.use_task_tokens else 0)
        if self.use_local:
            n += len(IBUG68_REGIONS) if self.regions else prior.num_local
        return n

    def global_clues(self, priors: FacePriorOutput) -> torch.Tensor:
        """``[B,k_g(+K),dim]`` tokens from the face embedding (and task tokens)."""
        feat = priors.global_feat.to(self.global_proj.weight.dtype)
        tokens = self.global_proj(feat).reshape(feat.shape[0], self.k_g, self.dim) + self.global_type
        if not self.use_task_tokens:
            return tokens
        if priors.task_tokens is None:
            raise ValueError("face-info-mining: use_task_tokens=true, but the face prior returned no task_tokens")
        task = self.task_proj(priors.task_tokens.to(self.task_proj.weight.dtype)) + self.task_type
        return torch.cat([tokens, task], dim=1)

    def local_clues(self, priors: FacePriorOutput) -> torch.Tensor:
        """``[B,L or 5,dim]`` tokens from the landmark-level features and coordinates."""
        tokens = self.local_proj(priors.local_feat.to(self.local_proj.weight.dtype)) + self.local_index
        if priors.landmarks is not None:
            coords = priors.landmarks.to(tokens.dtype)
            tokens = tokens + self.coord_proj(fourier_encode(coords, self.fourier_bands))
        if not self.regions:
            return tokens
        return torch.stack([tokens[:, r.start : r.stop].mean(dim=1) for r in IBUG68_REGIONS.values()], dim=1)

    def face_tokens(self, priors: FacePriorOutput, text: Text | None = None) -> torch.Tensor:
        """The aggregated face tokens ``[B,num_queries,out_dim]``."""
        clues = []
        if self.use_global:
            clues.append(self.global_clues(priors))
        if self.use_local:
            clues.append(self.local_clues(priors))
        queries = self.aggregator(torch.cat(clues, dim=1), text=text if self.text_guided else None)
        return self.out_proj(queries)

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: Text | None = None,
        questions: Sequence[str] | None = None,
    ) -> torch.Tensor:
        if priors is None:
            raise ValueError("face-info-mining needs the face prior's output, got priors=None")
        face = self.face_tokens(priors, text)
        if self.visual is None:
            return face
        extra = {"questions": questions} if self.reads_questions else {}
        return torch.cat([self.visual(visual, priors, text, **extra).to(face.dtype), face], dim=1)
