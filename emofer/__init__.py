"""emofer: facial-expression understanding with multimodal LLMs, composed from registered parts.

The four component registries are re-exported here::

    import emofer
    emofer.ENCODERS.names("openclip*")
    cfg = emofer.load_config("emo-llama-tiny", ["train.lr=1e-4"])
"""

from importlib import metadata as _metadata

from emofer.checkpoints import CHECKPOINT_FORMATS, from_checkpoint
from emofer.config import ConfigError, list_presets, load_config
from emofer.encoders import ENCODERS, FACE_PRIORS
from emofer.fusion import FUSIONS
from emofer.llm import LLM_HEADS
from emofer.model import EmoFERModel, Prediction, build_model
from emofer.registry import ComponentConfigError, DuplicateComponentError, Registry, UnknownComponentError

try:
    __version__ = _metadata.version("emofer")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "face_priors": FACE_PRIORS,
    "fusions": FUSIONS,
    "llm_heads": LLM_HEADS,
}
"""Every component registry by the plural name the CLI uses."""

__all__ = [
    "CHECKPOINT_FORMATS",
    "ENCODERS",
    "FACE_PRIORS",
    "FUSIONS",
    "LLM_HEADS",
    "REGISTRIES",
    "ComponentConfigError",
    "ConfigError",
    "DuplicateComponentError",
    "EmoFERModel",
    "Prediction",
    "Registry",
    "UnknownComponentError",
    "__version__",
    "build_model",
    "from_checkpoint",
    "list_presets",
    "load_config",
]
