"""Label scoring in one packed pass, and greedy generation through transformers' ``GenerationMixin``.

Scoring (:func:`score_candidates`) runs each sample's image + prompt prefix
and every candidate answer in **one** sequence: ``prefix | candidate 1 |
candidate 2 | ...``. A block attention mask lets each candidate token see
its sample's real prefix positions and the earlier tokens of its own
candidate, nothing else; positions restart at the prefix's end for every
candidate. The prefix runs once per sample and no KV cache is kept or
copied; the model's LM head runs at the prefix ends, and over the
candidates' positions a few at a time (:data:`CHUNK`), so a ``score`` call
holds about what a prefill of ``B`` rows holds (the candidates add
``sum(len - 1)`` positions per row, ~10 % of a prompt), not ``B x C``
vocabulary-wide rows of logits.

Generation (:func:`generate`) hands left-padded prompt embeddings to the
model's own ``generate`` (greedy, stop at any stop id or stop string) with a
generation config and stop criteria built once and reused; cutting rows at
their stop and parsing labels stay with the caller.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

BLOCK_MASK_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take the custom 4D mask :func:`score_candidates` builds."""
POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields of models that transform the LM head's output (then the model computes every logit itself)."""
CHUNK = 8
"""Candidate positions whose full-vocabulary logits exist at once in :func:`score_candidates`."""


def forward(
    lm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    logits_to_keep: int | torch.Tensor = 0,
) -> torch.Tensor:
    """Logits of ``lm`` on ``embeds`` (no cache); ``logits_to_keep`` selects positions."""
    out = lm(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=logits_to_keep,
    )
    return out.logits


def candidate_layout(candidate_ids: torch.Tensor, candidate_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each candidate's tokens go in the packed tail.

    A candidate of ``k`` tokens feeds its first ``k - 1`` (the last token's own
    prediction is never needed). Returns ``ids``, ``owner`` (candidate index),
    ``offset`` (position within the candidate) and ``target`` (the token each
    fed position predicts), all ``[Q]`` with ``Q = sum(k - 1)``.
    """
    lengths = candidate_mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("score: every candidate needs at least one token")
    feed = candidate_mask.clone()
    feed[torch.arange(len(lengths), device=lengths.device), lengths - 1] = 0
    owner, offset = feed.nonzero(as_tuple=True)
    return {
        "ids": candidate_ids[owner, offset],
        "owner": owner,
        "offset": offset,
        "target": candidate_ids[owner, offset + 1],
    }


def block_mask(prefix_mask: torch.Tensor, owner: torch.Tensor, offset: torch.Tensor, kind: str, dtype: torch.dtype
               ) -> torch.Tensor:
    """The ``[B,1,P+Q,P+Q]`` attention mask of prefixes followed by packed candidates.

    Prefix rows are causal over their real positions; a candidate token sees
    the real prefix and its own candidate's earlier tokens. ``kind`` is the
    attention implementation: a boolean mask (True = attend) for ``sdpa``,
    an additive float mask for ``eager``.
    """
    batch, width = prefix_mask.shape
    q, device = len(owner), prefix_mask.device
    size = width + q
    allowed = torch.ones(size, size, dtype=torch.bool, device=device).tril()
    allowed[width:, width:] = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
    allowed[width:, :width] = True
    real = torch.cat([prefix_mask.bool(), torch.ones(batch, q, dtype=torch.bool, device=device)], dim=1)
    mask = (allowed[None] & real[:, None, :])[:, None]
    if kind == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)


def score_candidates(
    lm: Any,
    embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    lengths: torch.Tensor,
    candidate_ids: torch.Tensor,
    candidate_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed log-likelihood ``[B,C]`` of each candidate continuation after each prefix, in one pass.

    Args:
        lm: a Hugging Face causal LM whose attention takes a 4D mask (``sdpa`` or ``eager``).
        embeds: ``[B,P,D]`` right-padded prefix embeddings (visual tokens spliced in).
        prefix_mask: ``[B,P]`` 1 at real prefix positions.
        lengths: ``[B]`` the prefixes' real lengths.
        candidate_ids: ``[C,K]`` right-padded token ids of the candidates.
        candidate_mask: ``[C,K]`` 1 at real candidate tokens.
    """
    kind = getattr(lm.config, "_attn_implementation", None) or "eager"
    if kind not in BLOCK_MASK_ATTENTION:
        raise ValueError(
            f"score packs the candidates behind a block attention mask, which attn_implementation={kind!r} "
            f"cannot take; build the causal-lm with one of {BLOCK_MASK_ATTENTION}"
        )
    batch, width = prefix_mask.shape
    layout = candidate_layout(candidate_ids, candidate_mask)
    q = len(layout["ids"])
    tail = lm.get_input_embeddings()(layout["ids"]).to(embeds.dtype)
    packed = torch.cat([embeds, tail[None].expand(batch, q, -1)], dim=1)
    prefix_pos = (prefix_mask.long().cumsum(-1) - 1).clamp(min=0)
    position_ids = torch.cat([prefix_pos, lengths[:, None] + layout["offset"][None]], dim=1)
    mask = block_mask(prefix_mask, layout["owner"], layout["offset"], kind, embeds.dtype)
    last, where = torch.unique(lengths - 1, return_inverse=True)
    rows = torch.arange(batch, device=embeds.device)
    hidden: dict[str, torch.Tensor] = {}
    hook = lm.get_decoder().register_forward_hook(lambda m, a, out: hidden.update(h=_last_hidden(out)))
    try:  # the model's own head runs at the prefix ends only; the candidates' hidden states are kept
        logits = forward(lm, packed, mask, position_ids, logits_to_keep=last)
    finally:
        hook.remove()
    first = logits[rows, where].float().log_softmax(-1)
    total = first[:, candidate_ids[:, 0]]
    if not q:
        return total
    head = lm.get_output_embeddings()
    text = lm.config.get_text_config()
    scaled = any(getattr(text, k, None) not in (None, 1, 1.0) for k in POST_HEAD)
    tol = 1e-3 if logits.dtype == torch.float32 else 2e-2
    if not scaled and torch.allclose(head(hidden["h"][:, last]).float(), logits.float(), rtol=tol, atol=tol):  # a plain head (no logit scaling or capping): apply it a few positions at a time
        tail_hidden = hidden.pop("h")[:, width:]
        target = layout["target"][None, :, None].expand(batch, q, 1)
        chunks = [
            _target_logprobs(head(tail_hidden[:, i : i + CHUNK]), target[:, i : i + CHUNK])
            for i in range(0, q, CHUNK)
        ]
        picked = torch.cat(chunks, dim=1)
    else:  # the model post-processes its logits: let it compute the candidates' too (a second pass)
        hidden.clear()
        rest = forward(lm, packed, mask, position_ids, logits_to_keep=torch.arange(width, width + q, device=last.device))
        picked = rest.float().log_softmax(-1).gather(2, layout["target"][None, :, None].expand(batch, q, 1)).squeeze(2)
    return total.index_add(1, layout["owner"], picked)


def _target_logprobs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` at ``target`` ``[B,c,1]``, computed in place (one copy of the logits at most)."""
    logits = logits.float()
    if logits.requires_grad:  # in-place ops would break the backward pass; pay for the copy
        return logits.log_softmax(-1).gather(2, target).squeeze(2)
    picked = logits.gather(2, target)
    top = logits.amax(-1, keepdim=True)
    norm = logits.sub_(top).exp_().sum(-1, keepdim=True).log_().add_(top)
    return (picked - norm).squeeze(2)


def _last_hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def generate(
    lm: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    stop_strings: tuple[str, ...] = (),
    tokenizer: Any = None,
) -> list[list[int]]:
    """Greedy continuation of each **left-padded** prefix (:func:`~emofer.llm.sequence.pack` with ``left``) by ``lm.generate``.

    A row ends at a stop id (not returned), a stop string (``tokenizer``
    needed; its tokens are returned, the caller cuts the text) or after
    ``max_new_tokens``. The generation config and the stop-string criterion
    are built once per setting and reused (``generate`` copies the config; the
    criterion keeps no state between calls), so a call pays neither a new
    config nor a scan of the tokenizer's vocabulary.
    """
    config = greedy_config(max_new_tokens, tuple(sorted(stop_ids)), pad_id)
    criteria = stop_string_criteria(tokenizer, tuple(stop_strings)) if stop_strings else None
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config, stopping_criteria=criteria)
    rows = out.tolist() if out.numel() else [[] for _ in range(len(embeds))]
    return [row[: next((i for i, t in enumerate(row) if t in stop_ids), len(row))] for row in rows]


@functools.lru_cache(maxsize=64)
def greedy_config(max_new_tokens: int, stop_ids: tuple[int, ...], pad_id: int) -> Any:
    """The ``GenerationConfig`` of greedy decoding up to ``max_new_tokens``, ending a row at any of ``stop_ids``.

    Nothing else is set: no logits processor or warper runs, and the output is
    the new tokens alone (``return_dict_in_generate`` off).
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stop_ids) or None,
        pad_token_id=pad_id,
        return_dict_in_generate=False,
    )


_STOP_CRITERIA: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], Any]] = weakref.WeakKeyDictionary()


def stop_string_criteria(tokenizer: Any, stop_strings: tuple[str, ...]) -> Any:
    """A ``StoppingCriteriaList`` ending rows at ``stop_strings``, built once per tokenizer and strings.

    transformers' ``StopStringCriteria`` reads and sorts the tokenizer's whole
    vocabulary when it is built; passing it prebuilt to ``generate`` keeps
    that out of every call.
    """
    if tokenizer is None:
        raise ValueError(f"generate: stop strings {list(stop_strings)} need the tokenizer")
    from transformers import StoppingCriteriaList, StopStringCriteria

    built = _STOP_CRITERIA.setdefault(tokenizer, {})
    if stop_strings not in built:
        built[stop_strings] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop_strings))])
    return built[stop_strings]
