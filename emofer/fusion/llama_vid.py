"""LLaMA-VID's per-frame tokens: one text-guided context token plus content token(s).

Follows ``vlm_attention`` / ``token_generation`` of dvlab-research/LLaMA-VID:
a Q-Former's query outputs (instruction-aware) are projected to the visual
width (``text_q``) and attend over the frame's patch features through a key
projection; the attended features are averaged over the queries and projected
to the LLM width (the *context* token)::

    context = val_proj(mean_q(softmax(text_q · key_proj(v)ᵀ / √d) · v))

The patch features ``v`` — all of them (``null``), their mean (``mean``) or a
grid pooled with ``avg_pool2d`` of kernel = stride = ``side // k``
(``grid:k``) — go through the ``mlp2x_gelu`` projector (the *content*
tokens). The Q-Former reads every visual token (class token included); the
class token is dropped before token generation only when the token count is
odd, as LLaMA-VID does (257 = 1 + 16² at 224 px).

The Q-Former is either LLaMA-VID's own (``qformer: bert``, see
:mod:`emofer.fusion.bert_qformer`), which reads the question as BERT text, or
a light pre-norm block (``qformer: light``, for the tiny presets), which reads
the LLM's embeddings of the instruction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion._blocks import QueryTransformer, Text, mlp2x_gelu
from emofer.fusion.base import Fusion, FusionSpec
from emofer.fusion.bert_qformer import BertQFormer

QFORMERS = ("light", "bert")
_LIGHT_DEFAULTS = {"dim": 256, "depth": 2, "num_heads": 8}
_CONTENT_ERROR = "content must be 'null', 'mean' or 'grid:k' with k >= 1"


def parse_content(content: str | None) -> str | int:
    """``None``/``"null"`` to ``"null"``, ``"mean"`` to ``"mean"``, ``"grid:k"`` to ``k``; else an error."""
    if content is None or content in ("null", "mean"):
        return content or "null"
    if isinstance(content, str) and content.startswith("grid:"):
        try:
            k = int(content.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ValueError(f"{_CONTENT_ERROR}, got {content!r}")


def class_token_skip(num_tokens: int) -> int:
    """1 when LLaMA-VID drops a leading class token before token generation, else 0.

    LLaMA-VID drops the first token whenever the count is odd. emofer drops it
    only when the rest also forms a square patch grid (so the first token is a
    class token): the same for every tower LLaMA-VID uses (257, 577 tokens),
    without dropping a patch of an odd grid that has no class token (3x3 = 9).
    """
    rest = num_tokens - 1
    return int(num_tokens % 2 == 1 and rest > 0 and math.isqrt(rest) ** 2 == rest)


def patch_grid(num_tokens: int) -> tuple[int, int]:
    """``(leading class tokens dropped, grid side)`` of the patch grid, after LLaMA-VID's class-token rule."""
    skip = class_token_skip(num_tokens)
    side = math.isqrt(num_tokens - skip)
    if side == 0 or side * side != num_tokens - skip:
        raise ValueError(
            f"{num_tokens} visual tokens form no square patch grid (LLaMA-VID drops a class token only "
            "when the token count is odd)"
        )
    return skip, side


def grid_tokens(side: int, k: int) -> int:
    """Content tokens per side of ``grid:k`` on a ``side``-wide grid: ``avg_pool2d`` with stride ``side // k``."""
    return side // (side // k)


@FUSIONS.register("llama-vid")
class LlamaVidTokens(Fusion):
    """LLaMA-VID tokens: a text-guided context token and content token(s) per frame.

    Args:
        spec: the neighbours' dims.
        content: ``"null"`` (every patch token, what most of LLaMA-VID's image
            models use), ``"mean"`` (one token, the mean of the patch tokens)
            or ``"grid:k"`` (the patch grid average-pooled with kernel = stride
            = ``side // k``, row-major: ``k×k`` tokens when ``k`` divides the
            side, ``(side // (side // k))²`` otherwise, as in LLaMA-VID).
        context: emit the context token (LLaMA-VID does; off leaves content only).
        text_guided: let the instruction guide the Q-Former (``light``: the LLM's
            embeddings of it join the queries; ``bert``: the question as BERT
            text). Without text at run time the learned queries alone read the image.
        qformer: ``"bert"`` (LLaMA-VID's BERT Q-Former on transformers'
            ``InstructBlipQFormerModel``) or ``"light"`` (a small pre-norm block).
        qformer_queries: the Q-Former's learned queries (LLaMA-VID: 32).
        dim: Q-Former width (light default 256; bert default 768, BERT-base).
        depth: Q-Former layers (light default 2; bert default 12).
        num_heads: Q-Former attention heads (light default 8; bert default 12).
        tokenizer: ``bert`` only: a local BERT tokenizer folder (bert-base-uncased).
        bert_config: ``bert`` only: further ``InstructBlipQFormerConfig`` fields
            (e.g. ``vocab_size``, ``intermediate_size``).
        num_queries: deprecated name of ``qformer_queries``.

    Example:
        >>> spec = FusionSpec(visual_dim=32, num_visual_tokens=16, out_dim=48, text_dim=24)
        >>> fusion = LlamaVidTokens(spec, content="mean", dim=32, depth=1, num_heads=4)
        >>> text = (torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.bool))
        >>> fusion(torch.randn(2, 16, 32), None, text).shape
        torch.Size([2, 2, 48])
    """

    def __init__(
        self,
        spec: FusionSpec,
        content: str | None = "mean",
        context: bool = True,
        text_guided: bool = True,
        qformer: str = "light",
        qformer_queries: int = 32,
        dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        tokenizer: str | None = None,
        bert_config: dict[str, Any] | None = None,
        num_queries: int | None = None,
    ) -> None:
        super().__init__(spec)
        if num_queries is not None:
            warnings.warn(
                "llama-vid's 'num_queries' is renamed 'qformer_queries' (so it differs from face-info-mining's "
                "num_queries); the old key will be removed",
                DeprecationWarning,
                stacklevel=2,
            )
            qformer_queries = num_queries
        if qformer not in QFORMERS:
            raise ValueError(f"llama-vid: qformer must be one of {QFORMERS}, got {qformer!r}")
        if qformer == "light" and (tokenizer is not None or bert_config is not None):
            raise ValueError("llama-vid: 'tokenizer' and 'bert_config' belong to qformer=bert, not qformer=light")
        self.content = parse_content(content)
        self.skip = class_token_skip(spec.num_visual_tokens)
        num_patches = spec.num_visual_tokens - self.skip
        if isinstance(self.content, int):
            _, side = patch_grid(spec.num_visual_tokens)
            if self.content > side:
                raise ValueError(
                    f"llama-vid content 'grid:{self.content}': the {spec.encoder_name} patch grid is only {side}x{side}"
                )
            num_content = grid_tokens(side, self.content) ** 2
        else:
            num_content = num_patches if self.content == "null" else 1
        self.qformer_type = qformer
        self.text_guided = text_guided and (qformer == "bert" or spec.text_dim is not None)
        d_vis = spec.visual_dim
        self.qformer = None
        if context:
            width = self._build_qformer(qformer, qformer_queries, dim, depth, num_heads, tokenizer, bert_config)
            self.query_proj = nn.Linear(width, d_vis)  # LLaMA-VID's vlm_att_projector
            self.key_proj = nn.Linear(d_vis, d_vis)  # vlm_att_key_projector
            self.value_proj = nn.Linear(d_vis, spec.out_dim)  # vlm_att_val_projector
        self.projector = mlp2x_gelu(d_vis, spec.out_dim)  # mm_projector
        self.num_output_tokens = int(context) + num_content

    def _build_qformer(
        self,
        kind: str,
        queries: int,
        dim: int | None,
        depth: int | None,
        num_heads: int | None,
        tokenizer: str | None,
        bert_config: dict[str, Any] | None,
    ) -> int:
        """Builds ``self.qformer`` and returns its output width."""
        spec = self.spec
        if kind == "light":
            dim, depth, num_heads = (
                _LIGHT_DEFAULTS[k] if v is None else v
                for k, v in (("dim", dim), ("depth", depth), ("num_heads", num_heads))
            )
            self.qformer = QueryTransformer(
                dim, queries, depth, num_heads, context_dim=spec.visual_dim,
                text_dim=spec.text_dim if self.text_guided else None,
            )
            return dim
        fields = dict(bert_config or {})
        for key, value in (("hidden_size", dim), ("num_hidden_layers", depth), ("num_attention_heads", num_heads)):
            if value is not None:
                fields[key] = value
        if dim is not None and "intermediate_size" not in fields:
            fields["intermediate_size"] = 4 * dim
        self.qformer = BertQFormer(spec.visual_dim, queries, fields, tokenizer if self.text_guided else None)
        return self.qformer.hidden_size

    @property
    def reads_questions(self) -> bool:
        """True for the BERT Q-Former, which tokenises the questions itself (see :class:`Fusion`)."""
        return self.qformer is not None and self.qformer_type == "bert" and self.text_guided

    def query_outputs(
        self, visual: torch.Tensor, text: Text | None = None, questions: Sequence[str] | None = None
    ) -> torch.Tensor:
        """The Q-Former's query outputs ``[B,Q,width]`` over every visual token (class token included)."""
        if self.qformer_type == "bert":
            return self.qformer(visual, questions if self.text_guided else None)
        return self.qformer(visual, text=text if self.text_guided else None)

    def context_token(self, text_q: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """LLaMA-VID's context token ``[B,1,out_dim]`` from projected queries ``text_q`` and the patch features."""
        patches = patches.to(self.key_proj.weight.dtype)
        logits = text_q.to(patches.dtype) @ self.key_proj(patches).transpose(-1, -2) / patches.shape[-1] ** 0.5
        ctx = (logits.softmax(dim=-1) @ patches).mean(dim=1, keepdim=True)
        return self.value_proj(ctx)

    def content_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """The content token(s) ``[B,M,out_dim]`` of each frame's patch features."""
        if self.content == "mean":
            patches = patches.mean(dim=1, keepdim=True)
        elif isinstance(self.content, int):
            side = math.isqrt(patches.shape[1])
            fmap = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
            stride = side // self.content
            patches = F.avg_pool2d(fmap, kernel_size=stride, stride=stride).flatten(2).transpose(1, 2)
        return self.projector(patches.to(self.projector[0].weight.dtype))

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: Text | None = None,
        questions: Sequence[str] | None = None,
    ) -> torch.Tensor:
        patches = visual[:, self.skip :]
        content = self.content_tokens(patches)
        if self.qformer is None:
            return content
        text_q = self.query_proj(self.query_outputs(visual, text, questions))
        return torch.cat([self.context_token(text_q, patches).to(content.dtype), content], dim=1)
