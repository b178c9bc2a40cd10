"""Face detection and cropping for face priors: OpenCV's Haar cascade, FaceXFormer's 50% margin.

FaceXFormer expects a face crop whose detector box is enlarged by 50%
(25% on each side, clamped to the image). :class:`FaceCropper` finds the
largest frontal face with the Haar cascade that ships with
``opencv-python-headless`` and falls back to the whole image, counting each
fallback, when it finds none.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


def enlarge_box(box: Box, image_size: tuple[int, int], margin: float = 0.5) -> Box:
    """Grows an ``(x, y, w, h)`` box by ``margin`` of its size (half on each side).

    Args:
        box: ``(x, y, w, h)`` in pixels.
        image_size: ``(width, height)`` of the image, to clamp to.
        margin: total growth as a fraction of the box size (FaceXFormer: 0.5).

    Returns:
        ``(left, top, right, bottom)`` integer pixel bounds for ``PIL.Image.crop``.

    Example:
        >>> enlarge_box((100, 100, 40, 40), (200, 200))
        (90, 90, 150, 150)
    """
    x, y, w, h = box
    dx, dy = w * margin / 2, h * margin / 2
    width, height = image_size
    return (
        int(max(0.0, x - dx)),
        int(max(0.0, y - dy)),
        int(min(float(width), x + w + dx)),
        int(min(float(height), y + h + dy)),
    )


class FaceCropper:
    """Callable that crops the largest detected face (enlarged by ``margin``) from a PIL image.

    When no face is found the whole image is returned; ``found`` and
    ``fallbacks`` count the two outcomes (per process: DataLoader workers
    keep their own counts), and the first fallback logs a warning.

    Args:
        margin: growth of the detector box (0.5 as in FaceXFormer's pipeline).
        scale_factor: the cascade's image-pyramid step.
        min_neighbors: detections a face needs (higher: fewer false positives).
        cascade: file name inside ``cv2.data.haarcascades``.

    Example:
        >>> import skimage.data
        >>> crop = FaceCropper()
        >>> face = crop(Image.fromarray(skimage.data.astronaut()))
        >>> crop.found, crop.fallbacks
        (1, 0)
    """

    def __init__(
        self,
        margin: float = 0.5,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        cascade: str = "haarcascade_frontalface_default.xml",
    ) -> None:
        self.margin = margin
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.cascade = cascade
        self.found = 0
        self.fallbacks = 0
        self._classifier: Any = None
        self._warned = False

    def faces(self, image: Image.Image | np.ndarray) -> list[Box]:
        """Every detected face as ``(x, y, w, h)``, largest first."""
        import cv2

        if self._classifier is None:
            path = cv2.data.haarcascades + self.cascade
            self._classifier = cv2.CascadeClassifier(path)
            if self._classifier.empty():
                raise FileNotFoundError(f"OpenCV could not load the Haar cascade {path}")
        array = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image)
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
        found = self._classifier.detectMultiScale(
            array, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors
        )
        boxes = [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)

    def detect(self, image: Image.Image | np.ndarray) -> Box | None:
        """The largest face as ``(x, y, w, h)``, or None when there is none."""
        boxes = self.faces(image)
        return boxes[0] if boxes else None

    def __call__(self, image: Image.Image) -> Image.Image:
        box = self.detect(image)
        if box is None:
            self.fallbacks += 1
            if not self._warned:
                log.warning(
                    "no face found by the Haar cascade; using the whole image "
                    "(this and later fallbacks are counted in FaceCropper.fallbacks)"
                )
                self._warned = True
            return image
        self.found += 1
        return image.crop(enlarge_box(box, image.size, self.margin))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_classifier"] = None  # OpenCV objects do not pickle; reloaded lazily
        return state

    def __repr__(self) -> str:
        return f"FaceCropper(margin={self.margin}, found={self.found}, fallbacks={self.fallbacks})"
