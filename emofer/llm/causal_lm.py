"""The ``causal-lm`` head: any Hugging Face causal LM (optionally with LoRA) reading spliced visual tokens."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from emofer.llm import LLM_HEADS, decoding
from emofer.llm.base import LLMHead
from emofer.llm.loading import load_causal_lm, load_tokenizer, lora_config
from emofer.llm.prompts import get_template
from emofer.llm.sequence import IGNORE_INDEX, PackedBatch, pack, pad_ids

log = logging.getLogger(__name__)

TRAINABLE = ("auto", "all", "lora", "none")


@LLM_HEADS.register("causal-lm")
class CausalLMHead(LLMHead):
    """A Hugging Face causal LM reading visual tokens spliced at ``<image>`` (LoRA optional).

    The prompt template renders each question; the visual tokens replace the
    ``<image>`` marker as embeddings; the loss covers answer tokens only.
    ``score`` runs the image + prompt prefix once and every candidate behind
    it in the same pass; ``generate`` decodes greedily through transformers'
    ``generate``.

    Args:
        path: a local directory, a hub id (found in the local cache unless
            ``local_files_only=False``) or ``"tiny-llama"`` (a random tiny
            LLaMA built offline, for tests and CPU presets).
        config: config kwargs (``model_type``, default ``"llama"``, plus e.g.
            ``LlamaConfig`` fields) for a randomly initialised model when
            ``path`` is None; builds under ``torch.device("meta")`` too.
        tokenizer: where the tokenizer lives; defaults to ``path``.
        template: the prompt template (set through ``model.prompt.template``).
        system: system prompt; None keeps the template's.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flash_attention_2"``
            (``score`` needs ``sdpa`` or ``eager``: it passes a block attention mask).
        gradient_checkpointing: recompute activations in the backward pass.
        lora: peft ``LoraConfig`` keywords (``{r, alpha, dropout,
            target_modules, use_dora, ...}``; defaults Emotion-LLaMA's
            ``r=64, alpha=16`` on ``[q_proj, v_proj]``, see
            :func:`~emofer.llm.loading.lora_config`); None for no adapters.
        trainable: ``"auto"`` (the adapters with LoRA, else every weight),
            ``"all"``, ``"lora"`` (adapters only) or ``"none"``.
        local_files_only: never reach the network (the default).
        trust_remote_code: run model code shipped with a checkpoint (off unless set).
        revision: a hub revision.

    Example:
        >>> head = CausalLMHead(path="tiny-llama", lora={"r": 4, "alpha": 8})
        >>> tokens = torch.randn(1, 3, head.hidden_size)
        >>> head.score(tokens, ["Which expression?"], ["happiness", "fear"]).shape
        torch.Size([1, 2])
    """

    TEXT_MEMO_SIZE = 65_536
    """Distinct texts whose token ids :meth:`token_ids` keeps (the memo is cleared when full)."""

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        template: str = "vicuna_v1",
        system: str | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        trainable: str = "auto",
        local_files_only: bool = True,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE:
            raise ValueError(f"causal-lm: trainable must be one of {TRAINABLE}, got {trainable!r}")
        if trainable == "lora" and lora is None:
            raise ValueError("causal-lm: trainable='lora' needs lora settings (lora: {r: ..., alpha: ...})")
        self.template = get_template(template)
        self.system = system
        self.trainable = trainable
        self.lora = lora_config(lora) if lora is not None else None
        model = load_causal_lm(
            path, config, dtype, attn_implementation, local_files_only, trust_remote_code, revision
        )
        if gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lm = model
        if self.lora is not None:
            from peft import get_peft_model

            self.lm = get_peft_model(model, self.lora)
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        self.pretrained_source = path
        tokenizer_path = tokenizer if tokenizer is not None else path
        self.tokenizer = (
            None
            if tokenizer_path is None
            else load_tokenizer(tokenizer_path, local_files_only, trust_remote_code, revision)
        )
        self._answer_ids: dict[str, list[int]] = {}
        self._text_ids: dict[tuple[str, bool], list[int]] = {}
        self._stops: dict[Any, tuple[set[int], tuple[str, ...]]] = {}
        if trainable == "none":
            self.freeze()
        else:
            self.unfreeze()

    # -- parts ----------------------------------------------------------
    @property
    def model(self) -> Any:
        """The causal LM that runs (LoRA layers, if any, injected in place)."""
        return self.lm.get_base_model() if self.lora is not None else self.lm

    @property
    def tok(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                "causal-lm was built from 'config' without a tokenizer; set llm.tokenizer to a tokenizer "
                "directory (or build from 'path') before reading labels out"
            )
        return self.tokenizer

    def unfreeze(self) -> CausalLMHead:
        """Makes trainable what ``trainable`` says: the adapters, every weight, or nothing."""
        adapters_only = self.lora is not None and self.trainable in ("auto", "lora")
        for name, p in self.named_parameters():
            p.requires_grad_(self.trainable != "none" and (not adapters_only or "lora_" in name))
        return self

    def adapter_keys(self) -> set[str]:
        """State-dict keys (relative to this head) of the LoRA adapters, saved by :meth:`save_adapter`."""
        return {k for k in self.state_dict() if "lora_" in k} if self.lora is not None else set()

    def save_adapter(self, directory: str | Path) -> None:
        """Writes the LoRA adapter with peft's ``save_pretrained`` (nothing without LoRA)."""
        if self.lora is not None:
            self.lm.save_pretrained(str(directory))

    def load_adapter(self, directory: str | Path) -> None:
        """Loads adapter weights written by :meth:`save_adapter`, with peft's own loader.

        Reads ``adapter_model.safetensors`` (or a legacy ``adapter_model.bin``,
        with ``weights_only=True``) from ``directory``.
        """
        from peft import set_peft_model_state_dict
        from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, load_peft_weights

        if self.lora is None:
            raise RuntimeError("causal-lm has no LoRA adapter to load into (lora is None)")
        if not any((Path(directory) / name).exists() for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)):
            raise FileNotFoundError(f"{directory} holds no peft adapter ({SAFETENSORS_WEIGHTS_NAME})")
        result = set_peft_model_state_dict(self.lm, load_peft_weights(str(directory), device="cpu"))
        if result.unexpected_keys:
            raise RuntimeError(f"adapter in {directory} has unexpected keys {result.unexpected_keys[:5]}")

    # -- text -----------------------------------------------------------
    @property
    def text_dim(self) -> int:
        return self.hidden_size

    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM's input embeddings of ``texts`` (no special tokens) and their mask."""
        ids, mask = pad_ids(self.token_ids(texts), self.tok.pad_token_id, self._device)
        return self.model.get_input_embeddings()(ids), mask.bool()

    def token_ids(self, texts: list[str], special: bool = False) -> list[list[int]]:
        """Token ids of each text, each distinct string tokenized once per head (kept up to :attr:`TEXT_MEMO_SIZE`).

        The prompt pieces before the visual tokens, evaluation questions and
        repeated training questions then cost a lookup instead of a tokenizer call.
        """
        memo = self._text_ids
        distinct = list(dict.fromkeys(texts))
        new = [t for t in distinct if (t, special) not in memo]
        if new:
            if len(memo) + len(new) > self.TEXT_MEMO_SIZE:
                memo.clear()  # and tokenize every text of this call, the memoised ones too
                new = distinct
            for text, ids in zip(new, self.tok(new, add_special_tokens=special)["input_ids"], strict=True):
                memo[(text, special)] = ids
        return [memo[(t, special)] for t in texts]

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of one answer turn as the LLM sees it after the template's anchor."""
        if answer not in self._answer_ids:
            anchor = self.tok(self.template.anchor, add_special_tokens=False)["input_ids"]
            full = self.tok(self.template.anchor + self.template.answer(answer), add_special_tokens=False)[
                "input_ids"
            ]
            if full[: len(anchor)] == anchor:
                ids = full[len(anchor) :]
            else:
                log.warning("answer %r merges with the prompt's last token; tokenizing it alone", answer)
                ids = self.tok(self.template.answer(answer), add_special_tokens=False)["input_ids"]
            self._answer_ids[answer] = ids
        return self._answer_ids[answer]

    def pack(
        self, num_visual: int, questions: list[str], answers: list[str] | None = None, left: bool = False
    ) -> PackedBatch:
        """Tokenizes prompts (and answers) around ``num_visual`` visual slots into a padded batch (``left``: left padding)."""
        pieces = [self.template.split(q, self.system) for q in questions]
        prefix = self.token_ids([p[0] for p in pieces], special=True)
        suffix = self.token_ids([p[1] for p in pieces])
        answer = None if answers is None else [self.answer_ids(a) for a in answers]
        return pack(prefix, num_visual, suffix, answer, self.tok.pad_token_id, self._device, left=left)

    # -- read-outs ------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _embed(self, packed: PackedBatch, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(packed.input_ids)
        return embeds.masked_scatter(packed.visual_mask[..., None], tokens.to(embeds.dtype))

    def _check(self, tokens: torch.Tensor, questions: list[str]) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.hidden_size or tokens.shape[0] != len(questions):
            raise ValueError(
                f"causal-lm expects visual tokens [B,M,{self.hidden_size}] for {len(questions)} questions; "
                f"got {tuple(tokens.shape)}"
            )

    def _answer_token_logprobs(
        self, tokens: torch.Tensor, questions: list[str], answers: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of every answer token (teacher forcing) and the row each belongs to."""
        logits, targets, where = self._answer_token_logits(tokens, questions, answers)
        logprobs = logits.float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        rows = torch.arange(len(questions), device=targets.device)[:, None].expand_as(where)[where]
        return logprobs, rows

    def _answer_token_logits(
        self, tokens: torch.Tensor, questions: list[str], answers: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [N,V], targets [N], where [B,L-1])`` of the ``N`` answer tokens (teacher forcing)."""
        self._check(tokens, questions)
        packed = self.pack(tokens.shape[1], questions, answers)
        targets = packed.labels[:, 1:]
        where = targets != IGNORE_INDEX
        # the LM head runs only over the window of positions that predict an answer token
        # (the prompt's logits are never used; at a tiny LLM the head is ~40% of the pass)
        cols = where.any(0).nonzero().squeeze(1)
        if len(cols) == 0:
            raise ValueError("no answer tokens to score: every answer is empty")
        keep = torch.arange(int(cols[0]), int(cols[-1]) + 1, device=targets.device)
        logits = decoding.forward(
            self.model,
            self._embed(packed, tokens),
            packed.attention_mask,
            packed.position_ids,
            logits_to_keep=keep,
        )
        return logits[where[:, keep]], targets[where], where

    def answer_logits(self, tokens: torch.Tensor, questions: list[str], answers: list[str]) -> list[torch.Tensor]:
        """The logits ``[A_i,V]`` that predict each answer token of each sample (teacher forcing).

        The sequence is packed as in training (:meth:`pack`), so these are the logits the loss reads.
        """
        self._check(tokens, questions)
        packed = self.pack(tokens.shape[1], questions, answers)
        logits = decoding.forward(
            self.model, self._embed(packed, tokens), packed.attention_mask, packed.position_ids
        )
        where = packed.labels[:, 1:] != IGNORE_INDEX
        return [logits[i, :-1][where[i]] for i in range(len(questions))]

    def answer_logprob(self, tokens: torch.Tensor, questions: list[str], answers: list[str]) -> torch.Tensor:
        """Summed log-likelihood ``[B]`` of each sample's whole answer turn (one full pass per batch)."""
        logprobs, rows = self._answer_token_logprobs(tokens, questions, answers)
        return torch.zeros(len(questions), device=logprobs.device).index_add(0, rows, logprobs)

    def loss(
        self,
        tokens: torch.Tensor,
        questions: list[str],
        answers: list[str],
        targets: torch.Tensor | None = None,
        classes: list[str] | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of the batch (prompt and visual slots ignored)."""
        logits, targets, _ = self._answer_token_logits(tokens, questions, answers)
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def _prompt(self, tokens: torch.Tensor, questions: list[str]) -> tuple[PackedBatch, torch.Tensor]:
        self._check(tokens, questions)
        packed = self.pack(tokens.shape[1], questions)
        return packed, self._embed(packed, tokens)

    def score(self, tokens: torch.Tensor, questions: list[str], candidates: list[str]) -> torch.Tensor:
        """Log-likelihood ``[B,C]`` of each candidate answer turn (its tokens summed, end marker included).

        One pass per batch: each sample's image + prompt prefix followed by
        every candidate, a block attention mask keeping the candidates apart
        (no KV cache is kept or copied; see :mod:`emofer.llm.decoding`).
        """
        packed, embeds = self._prompt(tokens, questions)
        ids, mask = pad_ids([self.answer_ids(c) for c in candidates], self.tok.pad_token_id, self._device)
        return decoding.score_candidates(
            self.model, embeds, packed.attention_mask, packed.lengths, ids, mask
        )

    def stop_tokens(self) -> tuple[set[int], tuple[str, ...]]:
        """What ends a generated answer: stop ids (EOS, one-token stop markers) and multi-token stop strings."""
        if self.template not in self._stops:
            self._stops[self.template] = self._find_stops()
        return self._stops[self.template]

    def _find_stops(self) -> tuple[set[int], tuple[str, ...]]:
        stop_ids = {self.tok.eos_token_id} if self.tok.eos_token_id is not None else set()
        strings = []
        for stop in self.template.stop:
            ids = self.tok(stop, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                stop_ids.add(ids[0])
            else:
                strings.append(stop)
        return stop_ids, tuple(strings)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """Greedy answers (at most ``max_new_tokens`` tokens) by the model's ``generate``, cut at the end marker."""
        self._check(tokens, questions)
        packed = self.pack(tokens.shape[1], questions, left=True)
        stop_ids, stop_strings = self.stop_tokens()
        rows = decoding.generate(
            self.model,
            self._embed(packed, tokens),
            packed.attention_mask,
            max_new_tokens,
            stop_ids,
            self.tok.pad_token_id,
            stop_strings,
            self.tok,
        )
        texts = self.tok.batch_decode(rows, skip_special_tokens=True)
        return [self.template.clean(t) for t in texts]
