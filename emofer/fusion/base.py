"""Base class of the fusion contract and the dims it is wired from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emofer.contracts import FacePriorOutput
from emofer.part import Part, abstract_attribute


@dataclass(frozen=True)
class PriorSpec:
    """The dims a face prior exposes, read by the fusion that consumes it."""

    global_dim: int
    local_dim: int
    num_local: int
    num_task_tokens: int = 0
    task_token_dim: int = 0


@dataclass(frozen=True)
class FusionSpec:
    """Everything a fusion needs to wire itself to its neighbours.

    Attributes:
        visual_dim: the encoder's ``embed_dim``.
        num_visual_tokens: the encoder's ``num_tokens``.
        out_dim: the LLM head's ``hidden_size``.
        prior: the face prior's dims, or None when the model has no prior.
        text_dim: width of the instruction embeddings the LLM head provides
            (None when it provides none, e.g. the classifier baseline).
        encoder_name / prior_name / llm_name: ids, for error messages.
    """

    visual_dim: int
    num_visual_tokens: int
    out_dim: int
    prior: PriorSpec | None = None
    text_dim: int | None = None
    encoder_name: str = "encoder"
    prior_name: str = "none"
    llm_name: str = "llm"


class Fusion(Part):
    """``(visual [B,N,D], priors, text)`` to LLM-space tokens ``[B,M,out_dim]``.

    Subclasses take ``spec: FusionSpec`` as their first argument plus their own
    keyword options, set ``num_output_tokens`` (a fusion that lacks it fails
    when built, naming it) and implement :meth:`forward`.
    ``text`` is ``(embeddings [B,L,text_dim], mask [B,L])`` or None.

    A fusion that reads the instruction as a string (e.g. LLaMA-VID's BERT
    Q-Former, which tokenises it itself) sets ``reads_questions`` and accepts a
    ``questions`` keyword in :meth:`forward`: one string per sample (the
    fusion repeats them for the frames of a video). Others never get it.
    """

    num_output_tokens: int = abstract_attribute("number M of LLM-space tokens per frame")
    requires_prior: bool = False
    reads_questions: bool = False

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(
        self,
        visual: torch.Tensor,
        priors: FacePriorOutput | None = None,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
