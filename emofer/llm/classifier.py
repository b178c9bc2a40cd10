"""The ``classifier`` head: a linear layer on pooled fused tokens, the supervised baseline without an LLM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emofer.llm import LLM_HEADS
from emofer.llm.base import LLMHead


@LLM_HEADS.register("classifier")
class ClassifierHead(LLMHead):
    """Mean-pools the fused tokens and classifies them linearly (no LLM, no text).

    ``score`` gives log-softmax over the logits of the requested candidates
    (renormalised over them), as does the model's ``classifier`` read-out,
    which reads :meth:`logits` directly; ``loss`` is cross-entropy on the batch targets
    mapped to the head's own classes; ``generate`` returns the top class name.

    Args:
        classes: the head's classes (canonical names; the model config's
            ``classes`` unless set).
        hidden_size: the width the fusion projects to.
        dropout: dropout on the pooled feature.

    Example:
        >>> head = ClassifierHead(["happiness", "sadness", "anger"], hidden_size=16)
        >>> head.score(torch.randn(2, 5, 16), ["?", "?"], ["sadness", "happiness"]).shape
        torch.Size([2, 2])
    """

    def __init__(self, classes: list[str], hidden_size: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        if not classes:
            raise ValueError("classifier: needs at least one class")
        self.classes = list(classes)
        self.hidden_size = hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, len(self.classes))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B,K]`` over :attr:`classes` from fused tokens ``[B,M,hidden_size]``."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.hidden_size:
            raise ValueError(f"classifier expects tokens [B,M,{self.hidden_size}], got {tuple(tokens.shape)}")
        return self.fc(self.dropout(self.norm(tokens.mean(dim=1))))

    def indices(self, names: list[str]) -> torch.Tensor:
        """The positions of ``names`` among :attr:`classes` (an unknown name is an error naming it)."""
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise ValueError(f"classifier has no class(es) {missing}; its classes are {self.classes}")
        return torch.tensor(
            [self.classes.index(n) for n in names], dtype=torch.long, device=self.fc.weight.device
        )

    def loss(
        self,
        tokens: torch.Tensor,
        questions: list[str],
        answers: list[str],
        targets: torch.Tensor | None = None,
        classes: list[str] | None = None,
    ) -> torch.Tensor:
        """Cross-entropy on ``targets`` (indices into ``classes``, the batch's class list)."""
        if targets is None or classes is None:
            raise ValueError("classifier loss needs the batch's 'targets' and 'classes'")
        mapped = self.indices(list(classes))[targets.to(self.fc.weight.device)]
        return F.cross_entropy(self.logits(tokens), mapped)

    def score(self, tokens: torch.Tensor, questions: list[str], candidates: list[str]) -> torch.Tensor:
        """Log-probabilities ``[B,C]`` of the candidates, renormalised over them."""
        return self.logits(tokens)[:, self.indices(list(candidates))].float().log_softmax(-1)

    def generate(self, tokens: torch.Tensor, questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The name of the top class of each sample."""
        return [self.classes[i] for i in self.logits(tokens).argmax(-1).tolist()]
