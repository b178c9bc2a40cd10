"""Temporal steps: per-frame LLM-space tokens ``[B*T,M,D]`` to one sequence per sample.

``concat`` keeps every frame's tokens in order (LLaMA-VID), ``mean`` averages
frames token-wise, ``attention`` pools frames token-wise with a learned query.
Images are videos with ``T=1``; every step is the identity on them.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalStep(nn.Module):
    """Base: ``forward(tokens [B*T,M,D], num_frames) -> [B,M',D]``."""

    def output_tokens(self, tokens_per_frame: int, num_frames: int) -> int:
        return tokens_per_frame

    @staticmethod
    def _split(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, m, d = tokens.shape
        if bt % num_frames:
            raise ValueError(f"{bt} per-frame token rows do not divide into {num_frames} frames")
        return tokens.reshape(bt // num_frames, num_frames, m, d)


class ConcatFrames(TemporalStep):
    """Concatenates the frames' tokens in time order (LLaMA-VID)."""

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._split(tokens, num_frames)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def output_tokens(self, tokens_per_frame: int, num_frames: int) -> int:
        return tokens_per_frame * num_frames


class MeanFrames(TemporalStep):
    """Averages the frames token-wise."""

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self._split(tokens, num_frames).mean(dim=1)


class AttentionPoolFrames(TemporalStep):
    """Pools the frames token-wise with a learned query (softmax over time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._split(tokens, num_frames)  # [B,T,M,D]
        logits = (self.norm(x) * self.query).sum(-1) / x.shape[-1] ** 0.5  # [B,T,M]
        weights = logits.softmax(dim=1).unsqueeze(-1)
        return (weights * x).sum(dim=1)


TEMPORAL_STEPS = ("concat", "mean", "attention")


def build_temporal(name: str, dim: int) -> TemporalStep:
    """Builds a temporal step by name for tokens of width ``dim``."""
    if name == "concat":
        return ConcatFrames()
    if name == "mean":
        return MeanFrames()
    if name == "attention":
        return AttentionPoolFrames(dim)
    raise ValueError(f"unknown temporal step {name!r}; choose from {', '.join(TEMPORAL_STEPS)}")
