"""Fusion modules (``FUSIONS``): visual tokens + face priors to LLM-space tokens."""

from emofer.fusion.base import Fusion, FusionSpec, PriorSpec
from emofer.registry import Registry

FUSIONS = Registry("fusion", "emofer.fusions", builtin_packages=("emofer.fusion",), public_name="FUSIONS")

__all__ = ["FUSIONS", "Fusion", "FusionSpec", "PriorSpec"]
