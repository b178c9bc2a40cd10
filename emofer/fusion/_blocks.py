"""Attention blocks shared by the query-based fusions (LLaMA-VID, Face Info Mining, resampler).

The central piece is :class:`QueryTransformer`: learned queries that read a set
of context tokens through cross-attention, Q-Former style. When instruction
embeddings are given they join the queries in self-attention (as the text
tokens of BLIP-2/InstructBLIP's Q-Former do), so what the queries pick up is
conditioned on the instruction; only the queries cross-attend and only they
are returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Text = tuple[torch.Tensor, torch.Tensor]
"""Instruction embeddings ``[B,L,D]`` and their mask ``[B,L]`` (true/1 = a real token)."""


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA/LLaMA-VID's ``mlp2x_gelu`` projector: Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def match_batch(text: Text, batch: int) -> Text:
    """Repeats per-sample instruction embeddings for per-frame rows (``B`` to ``B*T``)."""
    emb, mask = text
    if emb.shape[0] == batch:
        return emb, mask
    if emb.shape[0] == 0 or batch % emb.shape[0]:
        raise ValueError(
            f"instruction embeddings for {emb.shape[0]} samples cannot be matched to {batch} "
            "visual rows (expected the same count or a per-frame multiple)"
        )
    frames = batch // emb.shape[0]
    return emb.repeat_interleave(frames, dim=0), mask.repeat_interleave(frames, dim=0)


class Attention(nn.Module):
    """Multi-head attention from ``dim``-wide queries to ``kv_dim``-wide keys/values (SDPA)."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B,Q,dim]`` attends over ``context [B,N,kv_dim]``; ``mask [B,N]`` true = attend."""
        b, q_len, dim = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, q_len, h, dim // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, h, dim // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, q_len, dim))


class QueryBlock(nn.Module):
    """One pre-norm Q-Former block: self-attention, cross-attention (queries only), FFN."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.cross_attn = Attention(dim, num_heads, kv_dim=context_dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self,
        x: torch.Tensor,
        num_queries: int,
        context: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` holds the queries first, then any text tokens riding along."""
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, self_mask)
        queries, rest = x[:, :num_queries], x[:, num_queries:]
        queries = queries + self.cross_attn(self.norm_cross(queries), self.norm_context(context), context_mask)
        x = torch.cat([queries, rest], dim=1)
        return x + self.mlp(self.norm_mlp(x))


class QueryTransformer(nn.Module):
    """Learned queries reading a token set, optionally guided by the instruction.

    Args:
        dim: width of the queries.
        num_queries: how many learned queries (= output tokens).
        depth: number of :class:`QueryBlock` s.
        num_heads: attention heads (``dim`` must divide by it).
        context_dim: width of the tokens the queries read.
        text_dim: width of the instruction embeddings; None builds no text path
            (then ``text`` must be None in :meth:`forward`).
        mlp_ratio: FFN hidden width as a multiple of ``dim``.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int,
        depth: int,
        num_heads: int,
        context_dim: int,
        text_dim: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if num_queries < 1 or depth < 1:
            raise ValueError(f"a query transformer needs num_queries >= 1 and depth >= 1, got {num_queries}, {depth}")
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.text_proj = None if text_dim is None else nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(QueryBlock(dim, num_heads, context_dim, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        text: Text | None = None,
    ) -> torch.Tensor:
        """``context [B,N,context_dim]`` (``context_mask [B,N]``) to ``[B,num_queries,dim]``."""
        b = context.shape[0]
        x = self.queries.to(context.dtype).expand(b, -1, -1)
        self_mask = None
        if text is not None:
            if self.text_proj is None:
                raise ValueError("this query transformer was built without a text path (text_dim=None)")
            emb, mask = match_batch(text, b)
            x = torch.cat([x, self.text_proj(emb.to(self.text_proj.weight.dtype)).to(x.dtype)], dim=1)
            self_mask = torch.cat([mask.new_ones(b, self.num_queries), mask], dim=1).bool()
        for block in self.blocks:
            x = block(x, self.num_queries, context, self_mask, context_mask)
        return self.norm(x[:, : self.num_queries])
