"""Base class of the LLM-head contract."""

from __future__ import annotations

from pathlib import Path

import torch

from emofer.part import Part, abstract_attribute


class LLMHead(Part):
    """Reads visual tokens ``[B,M,hidden_size]`` together with instructions.

    Subclasses set ``hidden_size`` (a head that lacks it fails when built,
    naming it) and implement the three read-outs. A
    ``question`` is the full user text of one sample (the age-gender-race
    sentence, if any, already placed before the instruction); the head applies
    its prompt template and splices the visual tokens at ``<image>``.

    ``pretrained_source`` (see :class:`~emofer.part.Part`) names where the
    head's weights were loaded from; a head with adapters (LoRA) lists their
    keys in :meth:`adapter_keys` and saves them with :meth:`save_adapter`.
    """

    hidden_size: int = abstract_attribute("width of the visual tokens it reads [B,M,hidden_size]")

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

    def adapter_keys(self) -> set[str]:
        """State-dict keys (relative to this head) saved by :meth:`save_adapter`, not in the weights file."""
        return set()

    def save_adapter(self, directory: str | Path) -> None:
        """Writes the adapters to ``directory`` (nothing without adapters)."""

    def load_adapter(self, directory: str | Path) -> None:
        """Loads adapters written by :meth:`save_adapter`."""
        raise RuntimeError(f"{type(self).__name__} has no adapters to load from {directory}")
