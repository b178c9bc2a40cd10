"""Loading Hugging Face causal LMs and tokenizers, and wrapping them with peft LoRA.

A model comes from a directory or hub id (``from_pretrained``; offline unless
``local_files_only=False``), from a config dict with random weights
(``from_config``, which also works under ``torch.device("meta")`` for
structure checks), or from a named built-in such as ``tiny-llama`` (see
:mod:`emofer.testing`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from emofer.registry import Registry

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


NAMED_LLMS = Registry("named LLM", "emofer.named_llms", builtin_packages=("emofer.testing",), public_name="NAMED_LLMS")
"""Built-in model ids resolved to local directories: each entry is a function returning the folder.

``tiny-llama`` is registered by :mod:`emofer.testing` (created offline on first
use); plugins add their own with ``@NAMED_LLMS.register("my-llm")`` or an entry
point in the group ``emofer.named_llms``.
"""


def resolve_path(path: str) -> str:
    """A named built-in id to its directory; any other path or hub id unchanged."""
    return str(NAMED_LLMS.get(path)()) if path in NAMED_LLMS else path


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """``"bfloat16"``/``"bf16"``, ``"float16"``, ``"float32"`` or ``"auto"`` to what ``from_pretrained`` takes."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)} or 'auto'") from None


def load_causal_lm(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    local_files_only: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """An ``AutoModelForCausalLM`` from ``path`` (weights) or ``config`` (random init).

    Args:
        path: local directory, hub id, or a :data:`NAMED_LLMS` id.
        config: config kwargs (``model_type`` defaults to ``"llama"``) for a
            randomly initialised model; used only when ``path`` is None.
        dtype: parameter dtype (``"auto"`` keeps the checkpoint's).
        attn_implementation: ``"sdpa"`` (FlashAttention through PyTorch SDPA
            on GPUs), ``"eager"`` or ``"flash_attention_2"``.
        local_files_only: never reach the network (the default).
        trust_remote_code: run model code shipped with the checkpoint; off
            unless set.
        revision: a hub revision.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    if path is not None:
        return AutoModelForCausalLM.from_pretrained(
            resolve_path(path),
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
    if config is None:
        raise ValueError("causal-lm needs 'path' (weights) or 'config' (random init); got neither")
    kwargs = dict(config)
    model_type = kwargs.pop("model_type", "llama")
    hf_config = AutoConfig.for_model(model_type, **kwargs)
    dtype_kwargs = {} if torch_dtype == "auto" else {"dtype": torch_dtype}
    return AutoModelForCausalLM.from_config(
        hf_config,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        **dtype_kwargs,
    )


def load_tokenizer(
    path: str, local_files_only: bool = True, trust_remote_code: bool = False, revision: str | None = None
) -> Any:
    """The tokenizer at ``path``, with a pad token (the eos or unk token when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        resolve_path(path),
        local_files_only=local_files_only,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings (Emotion-LLaMA: ``r=64, alpha=16`` on ``q_proj``/``v_proj``)."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    @classmethod
    def parse(cls, lora: dict[str, Any]) -> LoraSettings:
        known = {"r", "alpha", "dropout", "target_modules"}
        unknown = sorted(set(lora) - known)
        if unknown:
            raise ValueError(f"causal-lm lora: unknown key(s) {unknown}; use {sorted(known)}")
        kwargs = dict(lora)
        if "target_modules" in kwargs:
            modules = kwargs["target_modules"]
            kwargs["target_modules"] = (modules,) if isinstance(modules, str) else tuple(modules)
        settings = cls(**kwargs)
        if settings.r < 1:
            raise ValueError(f"causal-lm lora: r must be >= 1, got {settings.r}")
        return settings


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wraps ``model`` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
