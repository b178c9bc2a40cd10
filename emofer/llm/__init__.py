"""LLM heads (``LLM_HEADS``): turn LLM-space tokens + text into losses, texts and label scores."""

from emofer.llm.base import LLMHead
from emofer.registry import Registry

LLM_HEADS = Registry("LLM head", "emofer.llm_heads", builtin_packages=("emofer.llm",), public_name="LLM_HEADS")

__all__ = ["LLM_HEADS", "LLMHead"]
