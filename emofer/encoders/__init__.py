"""Vision encoders (``ENCODERS``) and face-prior networks (``FACE_PRIORS``).

Every public module in this package is imported on the first lookup of
either registry, so built-in components register themselves there.
"""

from emofer.contracts import FacePriorOutput, FacePriors
from emofer.encoders.base import FacePrior, VisionEncoder
from emofer.registry import Registry

ENCODERS = Registry(
    "encoder", "emofer.encoders", builtin_packages=("emofer.encoders",), public_name="ENCODERS"
)
FACE_PRIORS = Registry(
    "face prior", "emofer.face_priors", builtin_packages=("emofer.encoders",), public_name="FACE_PRIORS"
)

__all__ = ["ENCODERS", "FACE_PRIORS", "FacePrior", "FacePriorOutput", "FacePriors", "VisionEncoder"]
