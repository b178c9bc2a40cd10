"""LLaMA-VID's instruction-aware BERT Q-Former, on transformers' ``InstructBlipQFormerModel``.

dvlab-research/LLaMA-VID runs the LAVIS BERT Q-Former of InstructBLIP:
``bert-base-uncased`` with a cross-attention block in every second layer
(``cross_attention_freq=2``) reading the vision tower's features, 32 learned
query tokens, and the raw question as BERT text (``[CLS] q [SEP]``,
left-truncated to 256 tokens). Queries and text share self-attention; only the
queries cross-attend and only they are returned. The image features are
layer-normalised first (``vlm_att_ln``, over every token including CLS).
transformers ships that network as ``InstructBlipQFormerModel``; this module
adds the query tokens, the layer norm and the tokenizer around it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

BERT_BASE_QFORMER: dict[str, Any] = {
    # bert-base-uncased plus LLaMA-VID's added "[DEC]" bos token (30522 + 1)
    "vocab_size": 30523,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "cross_attention_frequency": 2,
}
"""``InstructBlipQFormerConfig`` fields of LLaMA-VID's Q-Former (``encoder_hidden_size`` is the vision width)."""

MAX_TEXT_TOKENS = 256
"""LLaMA-VID tokenises the question with ``truncation=True, max_length=256`` (left side)."""


def match_questions(questions: Sequence[str], batch: int) -> list[str]:
    """Repeats per-sample questions for per-frame rows (``B`` to ``B*T``), as LLaMA-VID does for video."""
    questions = list(questions)
    if len(questions) == batch:
        return questions
    if not questions or batch % len(questions):
        raise ValueError(
            f"{len(questions)} questions cannot be matched to {batch} visual rows "
            "(expected the same count or a per-frame multiple)"
        )
    frames = batch // len(questions)
    return [q for q in questions for _ in range(frames)]


def load_bert_tokenizer(path: str | os.PathLike[str], max_length: int = MAX_TEXT_TOKENS) -> Any:
    """A BERT tokenizer from a local folder, truncating on the left as LLaMA-VID does."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Q-Former tokenizer folder {path!r} does not exist; point it at a local bert-base-uncased "
            "folder (the files its tokenizer was saved with)"
        )
    return AutoTokenizer.from_pretrained(os.fspath(path), truncation_side="left", model_max_length=max_length)


class BertQFormer(nn.Module):
    """Learned queries reading image features through a BERT Q-Former, guided by the question text.

    Args:
        visual_dim: width of the image features (the cross-attention's
            ``encoder_hidden_size``; 1408 for EVA-ViT-g).
        num_queries: learned query tokens (LLaMA-VID: 32).
        config: ``InstructBlipQFormerConfig`` fields over :data:`BERT_BASE_QFORMER`.
        tokenizer: a local BERT tokenizer folder; needed only when questions
            are given at run time (without one the queries read the image alone).
        max_text_tokens: the question is left-truncated to this many BERT tokens.

    Example:
        >>> qformer = BertQFormer(32, num_queries=4, config={"hidden_size": 16, "num_hidden_layers": 2,
        ...                       "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50})
        >>> qformer(torch.randn(2, 17, 32)).shape
        torch.Size([2, 4, 16])
    """

    def __init__(
        self,
        visual_dim: int,
        num_queries: int = 32,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_text_tokens: int = MAX_TEXT_TOKENS,
    ) -> None:
        super().__init__()
        from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

        if num_queries < 1:
            raise ValueError(f"a BERT Q-Former needs num_queries >= 1, got {num_queries}")
        fields = {**BERT_BASE_QFORMER, **(config or {}), "encoder_hidden_size": visual_dim}
        self.bert = InstructBlipQFormerModel(InstructBlipQFormerConfig(**fields))
        hidden = self.bert.config.hidden_size
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden) * self.bert.config.initializer_range)
        self.norm = nn.LayerNorm(visual_dim)  # LLaMA-VID's vlm_att_ln (torch's default eps 1e-5)
        self.tokenizer_path = tokenizer
        self.tokenizer = None if tokenizer is None else load_bert_tokenizer(tokenizer, max_text_tokens)
        if self.tokenizer is not None and len(self.tokenizer) > self.bert.config.vocab_size:
            raise ValueError(
                f"Q-Former tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens, more than the Q-Former's "
                f"vocab_size {self.bert.config.vocab_size}"
            )
        self.max_text_tokens = max_text_tokens

    @property
    def hidden_size(self) -> int:
        """Width of the query outputs."""
        return int(self.bert.config.hidden_size)

    @property
    def num_queries(self) -> int:
        """How many query tokens (= output tokens)."""
        return int(self.query_tokens.shape[1])

    def tokenize(self, questions: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of ``[CLS] q [SEP]`` per question, padded to the longest."""
        if self.tokenizer is None:
            raise ValueError(
                "this BERT Q-Former was built without a tokenizer, so it cannot read the questions; set the "
                "fusion's 'tokenizer' to a local bert-base-uncased folder (or text_guided=false)"
            )
        enc = self.tokenizer(
            list(questions), padding="longest", truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def forward(self, visual: torch.Tensor, questions: Sequence[str] | None = None) -> torch.Tensor:
        """Image features ``[B,N,visual_dim]`` (and one question per row) to query outputs ``[B,Q,hidden]``."""
        visual = self.norm(visual.to(self.norm.weight.dtype))
        queries = self.query_tokens.expand(visual.shape[0], -1, -1)
        input_ids = mask = None
        if questions is not None:
            input_ids, text_mask = self.tokenize(match_questions(questions, visual.shape[0]), visual.device)
            mask = torch.cat([text_mask.new_ones(queries.shape[:2]), text_mask], dim=1)
        out = self.bert(
            input_ids=input_ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=visual
        ).last_hidden_state
        return out[:, : queries.shape[1]]
