"""Multimodal sequences: prompt token ids, visual slots and answer ids packed into one padded batch.

Each sample is ``prefix ids + M visual slots + suffix ids + answer ids``
(the visual slots are filled with the fusion's tokens as embeddings). Rows
are right-padded (left-padded for generation); the attention mask marks real positions; labels are the
answer ids and -100 everywhere else (prompt, visual slots, padding), so the
loss covers answer tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Label of every position that is not an answer token."""


@dataclass
class PackedBatch:
    """A padded batch of multimodal sequences (right padding unless packed with ``left=True``).

    Attributes:
        input_ids: ``[B,L]`` token ids; the pad id at visual slots and padding.
        visual_mask: ``[B,L]`` true at the visual slots (``M`` per row).
        attention_mask: ``[B,L]`` 1 at real positions, 0 at padding.
        labels: ``[B,L]`` answer ids, -100 elsewhere.
        lengths: ``[B]`` real length of each row.
    """

    input_ids: torch.Tensor
    visual_mask: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions 0..len-1 of each row (padding repeats the last one)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pack(
    prefix_ids: Sequence[Sequence[int]],
    num_visual: int,
    suffix_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]] | None,
    pad_id: int,
    device: torch.device | str | None = None,
    left: bool = False,
) -> PackedBatch:
    """Packs per-sample pieces into a :class:`PackedBatch` (right padding, or left padding with ``left``).

    Args:
        prefix_ids: ids before the visual tokens (with the BOS token, if any).
        num_visual: visual tokens per sample.
        suffix_ids: ids after the visual tokens, up to where the answer starts.
        answer_ids: the answer's ids (labelled), or None for a prompt alone.
        pad_id: id written at visual slots and padding.
        device: where the tensors go.
        left: pad on the left instead, every row ending at the right edge (as ``generate`` wants a prompt).
    """
    if len(prefix_ids) != len(suffix_ids) or (answer_ids is not None and len(answer_ids) != len(prefix_ids)):
        raise ValueError("prefix, suffix and answer id lists must have one entry per sample")
    answers = answer_ids if answer_ids is not None else [[] for _ in prefix_ids]
    # one Python list per row, one tensor per batch: a tensor op per piece costs more than the pieces
    rows = [[*p, *([pad_id] * num_visual), *s, *a] for p, s, a in zip(prefix_ids, suffix_ids, answers, strict=True)]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = max((len(r) for r in rows), default=0)
    gaps = [[pad_id] * (width - len(r)) for r in rows]
    input_ids = torch.tensor([g + r if left else r + g for r, g in zip(rows, gaps, strict=True)], dtype=torch.long)
    input_ids = input_ids.view(len(rows), width)
    first = (width - lengths if left else torch.zeros_like(lengths))[:, None]
    visual = first + torch.tensor([len(p) for p in prefix_ids], dtype=torch.long)[:, None]
    answer = first + lengths[:, None] - torch.tensor([len(a) for a in answers], dtype=torch.long)[:, None]
    pos = torch.arange(width)[None]
    real = (pos >= first) & (pos < first + lengths[:, None])
    return PackedBatch(
        input_ids=input_ids.to(device),
        visual_mask=((pos >= visual) & (pos < visual + num_visual)).to(device),
        attention_mask=real.long().to(device),
        labels=input_ids.masked_fill(~(real & (pos >= answer)), IGNORE_INDEX).to(device),
        lengths=lengths.to(device),
    )

def pad_ids(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads id lists to ``(ids [N,K], mask [N,K])``."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.tensor([[*r, *([pad_id] * (width - len(r)))] for r in rows], dtype=torch.long).view(len(rows), width)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return ids.to(device), mask.to(device)
