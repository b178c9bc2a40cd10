"""Base class of the LLM-head contract."""

from __future__ import annotations

import torch
from torch import nn


class LLMHead(nn.Module):
    """Reads visual tokens ``[B,M,hidden_size]`` together with instructions.

    Subclasses set ``hidden_size`` and implement the three read-outs. A
    ``question`` is the full user text of one sample (the age-gender-race
    sentence, if any, already placed before the instruction); the head applies
    its prompt template and splices the visual tokens at ``<image>``.

    ``pretrained_source`` names where the head's weights were loaded from (a
    directory or hub id), or is None for randomly initialised heads; frozen
    weights from a named source are not copied by ``save_pretrained``.
    """

    hidden_size: int
    pretrained_source: str | None = None

    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Instruction embeddings ``([B,L,D], mask [B,L])`` for text-guided fusions, or None."""
        return None

    @property
    def text_dim(self) -> int | None:
        """Width of :meth:`embed_text`'s output, or None when it gives none."""
        return None

    def loss(
        self,
        tokens: torch.Tensor,
        questions: list[str],
        answers: list[str],
        targets: torch.Tensor | None = None,
        classes: list[str] | None = None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Training loss (answer tokens only; classifiers use ``targets``, indices into ``classes``)."""
        raise NotImplementedError

    def generate(
        self, tokens: torch.Tensor, questions: list[str], max_new_tokens: int = 8
    ) -> list[str]:  # pragma: no cover - abstract
        """Greedy answers, one text per sample."""
        raise NotImplementedError

    def score(
        self, tokens: torch.Tensor, questions: list[str], candidates: list[str]
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Log-likelihood ``[B,C]`` of each candidate answer."""
        raise NotImplementedError

    def freeze(self) -> LLMHead:
        """Stops gradients to every parameter (adapters included) and switches to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def unfreeze(self) -> LLMHead:
        """Makes the head trainable again under its own policy (all parameters by default)."""
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    @property
    def is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())
