"""Shared-prefix label scoring and greedy decoding over a Hugging Face causal LM's KV cache.

The image + prompt prefix runs once (:func:`prefill`); its cache is then
expanded over the candidates, which run together as one right-padded batch
(:func:`score_candidates`), or extended token by token (:func:`greedy`).
Prefixes of different lengths sit right-padded in the cache; every later
step masks the padding gap, and positions continue from each row's own
length, so a padded batch gives the same numbers as one sample at a time.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def _cache_keyword(lm: Any) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier releases)."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(lm: Any) -> Any:
    """An empty ``DynamicCache`` laid out for ``lm``'s layers."""
    from transformers import DynamicCache

    return DynamicCache(config=lm.config)


def forward(
    lm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any = None,
    logits_to_keep: int | torch.Tensor = 0,
) -> torch.Tensor:
    """Logits of ``lm`` on ``embeds``, extending ``cache`` in place when one is given."""
    kwargs = {_cache_keyword(lm): cache} if cache is not None else {}
    out = lm(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=cache is not None,
        logits_to_keep=logits_to_keep,
        **kwargs,
    )
    return out.logits


def prefill(
    lm: Any, embeds: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Runs right-padded prefixes once: ``(next-token logits [B,V] at each row's end, cache)``."""
    cache = new_cache(lm)
    last = lengths - 1
    keep, where = torch.unique(last, return_inverse=True)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = forward(lm, embeds, attention_mask, position_ids, cache, logits_to_keep=keep)
    rows = torch.arange(embeds.shape[0], device=embeds.device)
    return logits[rows, where].float(), cache


def score_candidates(
    lm: Any,
    last_logits: torch.Tensor,
    cache: Any,
    prefix_mask: torch.Tensor,
    lengths: torch.Tensor,
    candidate_ids: torch.Tensor,
    candidate_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed log-likelihood ``[B,C]`` of each candidate continuation after each prefix.

    Args:
        lm: the causal LM the prefix ran through.
        last_logits: ``[B,V]`` from :func:`prefill`.
        cache: the prefix cache from :func:`prefill`; expanded in place to ``B*C`` rows.
        prefix_mask: ``[B,P]`` the prefixes' attention mask.
        lengths: ``[B]`` the prefixes' real lengths.
        candidate_ids: ``[C,K]`` right-padded token ids of the candidates.
        candidate_mask: ``[C,K]`` 1 at real candidate tokens.
    """
    batch, num_cand = last_logits.shape[0], candidate_ids.shape[0]
    ids = candidate_ids.repeat(batch, 1)  # row b*C + j is candidate j of sample b
    mask = candidate_mask.repeat(batch, 1)
    first = last_logits.log_softmax(-1).repeat_interleave(num_cand, dim=0)
    total = first.gather(1, ids[:, :1]).squeeze(1)
    if ids.shape[1] > 1:
        cache.batch_repeat_interleave(num_cand)
        steps = ids.shape[1] - 1  # the last token's own prediction is never needed
        full_mask = torch.cat([prefix_mask.repeat_interleave(num_cand, dim=0), mask[:, :steps]], dim=1)
        start = lengths.repeat_interleave(num_cand)[:, None]
        position_ids = start + torch.arange(steps, device=ids.device)
        embeds = lm.get_input_embeddings()(ids[:, :steps])
        logits = forward(lm, embeds, full_mask, position_ids, cache)
        rest = logits.float().log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
        total = total + (rest * mask[:, 1:]).sum(-1)
    return total.view(batch, num_cand)


@torch.no_grad()
def greedy(
    lm: Any,
    last_logits: torch.Tensor,
    cache: Any,
    prefix_mask: torch.Tensor,
    lengths: torch.Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
) -> list[list[int]]:
    """Greedy continuation of each prefix; a row ends at a stop id (not returned) or after ``max_new_tokens``."""
    batch, device = last_logits.shape[0], last_logits.device
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    mask, generated = prefix_mask, []
    for step in range(max_new_tokens):
        token = last_logits.argmax(-1).masked_fill(done, pad_id)
        generated.append(token)
        done = done | torch.isin(token, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        embeds = lm.get_input_embeddings()(token[:, None])
        position_ids = (lengths + step)[:, None]
        last_logits = forward(lm, embeds, mask, position_ids, cache)[:, -1].float()
    rows = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(batch)]
    return [row[: next((i for i, t in enumerate(row) if t in stop_ids), len(row))] for row in rows]
