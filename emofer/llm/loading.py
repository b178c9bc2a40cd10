"""Loading Hugging Face causal LMs and tokenizers, and wrapping them with peft LoRA.

A model comes from a directory or hub id (``from_pretrained``; offline unless
``local_files_only=False``), from a config dict with random weights
(``from_config``, which also works under ``torch.device("meta")`` for
structure checks), or from a named built-in such as ``tiny-llama`` (see
:mod:`emofer.testing`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
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


LORA_DEFAULTS: dict[str, Any] = {"r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
"""emofer's LoRA defaults (Emotion-LLaMA: ``r=64, alpha=16`` on ``q_proj``/``v_proj``), where peft's differ."""
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
"""Short names a config may use for peft's ``LoraConfig`` fields."""


def lora_config(lora: Mapping[str, Any]) -> Any:
    """peft's ``LoraConfig`` for a causal LM from a config's ``lora:`` node.

    Every ``LoraConfig`` keyword passes through (``use_dora``, ``use_rslora``,
    ``bias``, ``layers_to_transform``, ...), with ``alpha``/``dropout`` as
    short names for ``lora_alpha``/``lora_dropout`` and :data:`LORA_DEFAULTS`
    for what is not set. A one-string ``target_modules`` names one module.

    Raises:
        ValueError: a key ``LoraConfig`` does not take, or ``r < 1``.
    """
    from peft import LoraConfig

    accepted = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type", "peft_type"}
    unknown = sorted(k for k in lora if LORA_ALIASES.get(k, k) not in accepted)
    if unknown:
        raise ValueError(
            f"causal-lm lora: unknown key(s) {unknown}; use {sorted(LORA_ALIASES)} or any peft LoraConfig field "
            f"({', '.join(sorted(LORA_DEFAULTS))}, use_dora, bias, ...)"
        )
    kwargs = dict(LORA_DEFAULTS) | {LORA_ALIASES.get(k, k): v for k, v in lora.items()}
    modules = kwargs["target_modules"]
    kwargs["target_modules"] = [modules] if isinstance(modules, str) else list(modules)
    if kwargs["r"] < 1:
        raise ValueError(f"causal-lm lora: r must be >= 1, got {kwargs['r']}")
    return LoraConfig(task_type="CAUSAL_LM", **kwargs)
