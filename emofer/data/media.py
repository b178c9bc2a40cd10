"""Reading images and frame folders into RGB PIL images, with errors that name the file.

Grey, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB (16-bit
values are scaled, not clipped). A missing, corrupt or truncated file raises
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
    """Any PIL mode to 8-bit RGB; 16- and 32-bit greys are scaled to 0-255, alpha is dropped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Opens an image file as 8-bit RGB, fully decoded (so truncation is caught here)."""
    p = Path(path)
    if not p.is_file():
        raise BadSampleError(p, "file not found" if not p.exists() else "not a file")
    try:
        with Image.open(p) as img:
            img.load()
            return to_rgb(img)
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
