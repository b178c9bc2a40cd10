"""Temporal steps: per-frame LLM-space tokens ``[B*T,M,D]`` to one sequence per sample.

``concat`` keeps every frame's tokens in order (LLaMA-VID), ``mean`` averages
frames token-wise, ``attention`` pools frames token-wise with a learned query.
Images are videos with ``T=1``; every step is the identity on them.

Steps are registered in :data:`TEMPORAL_STEPS` like every other part and
built with the LLM width as ``dim``; a plugin adds one with
``@TEMPORAL_STEPS.register("my-step")`` on a :class:`TemporalStep` subclass
(or an entry point in the group ``emofer.temporal_steps``).
"""

from __future__ import annotations

import torch
from torch import nn

from emofer.part import Part
from emofer.registry import Registry

TEMPORAL_STEPS = Registry("temporal step", "emofer.temporal_steps", public_name="TEMPORAL_STEPS")
"""Temporal steps by name (``model.temporal``), each built as ``cls(dim=<LLM width>)``."""


class TemporalStep(Part):
    """Base: ``forward(tokens [B*T,M,D], num_frames) -> [B,M',D]``.

    Args:
        dim: the token width ``D`` (the LLM's hidden size).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def output_tokens(self, tokens_per_frame: int, num_frames: int) -> int:
        return tokens_per_frame

    @staticmethod
    def _split(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, m, d = tokens.shape
        if bt % num_frames:
            raise ValueError(f"{bt} per-frame token rows do not divide into {num_frames} frames")
        return tokens.reshape(bt // num_frames, num_frames, m, d)


@TEMPORAL_STEPS.register("concat")
class ConcatFrames(TemporalStep):
    """Concatenates the frames' tokens in time order (LLaMA-VID)."""

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._split(tokens, num_frames)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def output_tokens(self, tokens_per_frame: int, num_frames: int) -> int:
        return tokens_per_frame * num_frames


@TEMPORAL_STEPS.register("mean")
class MeanFrames(TemporalStep):
    """Averages the frames token-wise."""

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self._split(tokens, num_frames).mean(dim=1)


@TEMPORAL_STEPS.register("attention")
class AttentionPoolFrames(TemporalStep):
    """Pools the frames token-wise with a learned query (softmax over time)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._split(tokens, num_frames)  # [B,T,M,D]
        logits = (self.norm(x) * self.query).sum(-1) / x.shape[-1] ** 0.5  # [B,T,M]
        weights = logits.softmax(dim=1).unsqueeze(-1)
        return (weights * x).sum(dim=1)


def build_temporal(name: str, dim: int) -> TemporalStep:
    """Builds the temporal step registered as ``name`` for tokens of width ``dim``."""
    return TEMPORAL_STEPS.build({"name": name}, dim=dim)
