"""The ``none`` face prior: a model with no face-prior network."""

from __future__ import annotations

from emofer.encoders import FACE_PRIORS


@FACE_PRIORS.register("none")
def no_prior() -> None:
    """No face prior: builds None, so the model uses the vision encoder alone (no AGR sentence from it)."""
    return None
