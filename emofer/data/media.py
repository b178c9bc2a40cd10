"""Reading images and frame folders into RGB PIL images, with errors that name the file.

Grey, palette, RGBA, CMYK, 16-bit and float images are converted to upright
8-bit RGB (:func:`to_rgb`: EXIF orientation applied, 16-bit and float values
scaled by their range, not clipped). A missing, corrupt or truncated file raises
:class:`~emofer.data.errors.BadSampleError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from emofer.data.errors import BadSampleError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video file (by extension)."""
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image to upright 8-bit RGB: the one place every image path goes through.

    - EXIF orientation is applied (as ``ImageOps.exif_transpose``), so a phone photo
      is seen the way it is shown;
    - 16-bit images are scaled from 0-65535; 32-bit integer images from 0-65535
      when a value exceeds 255, else taken as 8-bit;
    - float images are scaled by their range: values within 0..1 are taken as
      0..1, else within 0..255 as 8-bit, else within 0..65535 as 16-bit; a float
      image with NaN or infinite values, or values outside 0..65535, is refused
      (:class:`ValueError`), since no scale is right for it;
    - alpha is dropped (composited on black), palette, grey and CMYK become RGB.
    """
    img = upright(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = _value_range(a, img.mode)
        return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _value_range(a: np.ndarray, mode: str) -> float:
    """The full-scale value of a 16/32-bit or float grey image (what maps to 255)."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        if not np.isfinite(a).all():
            raise ValueError("a float image holds NaN or infinite values")
        low, high = float(a.min(initial=0)), float(a.max(initial=0))
        if low < 0 or high > 65535:
            raise ValueError(f"a float image with values in {low:g}..{high:g} has no known range (0..1, 0..255, 0..65535)")
        return 1.0 if high <= 1.0 else 255.0 if high <= 255 else 65535.0
    return 65535.0 if a.max(initial=0) > 255 else 255.0


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (unchanged when it has none)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF is no reason to refuse the pixels
        return img
    if orientation in (None, 1):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Opens an image file as 8-bit RGB, fully decoded (so truncation is caught here)."""
    p = Path(path)
    if not p.is_file():
        raise BadSampleError(p, "file not found" if not p.exists() else "not a file")
    try:
        with Image.open(p) as img:
            img.load()
            try:
                return to_rgb(img)
            except ValueError as err:  # pixel values with no known scale
                raise BadSampleError(p, str(err)) from None
    except UnidentifiedImageError:
        raise BadSampleError(p, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadSampleError(p, f"corrupt or truncated image ({err})") from None


def list_frames(folder: str | os.PathLike[str]) -> list[str]:
    """The image files of a frame folder, sorted by name."""
    p = Path(folder)
    if not p.is_dir():
        raise BadSampleError(p, "frame folder not found")
    frames = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not frames:
        raise BadSampleError(p, "frame folder holds no images")
    return frames
