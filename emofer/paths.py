"""Where emofer keeps things on disk: its cache folder and the layout of a run folder.

Core layer: the training, experiment and grid code all read these names, so
none of them has to import another for a folder name.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR = "model"
"""Where a run folder holds its exported model (``save_pretrained``)."""


def default_cache_dir() -> Path:
    """emofer's cache folder: ``$EMOFER_CACHE`` or ``~/.cache/emofer``."""
    return Path(os.environ.get("EMOFER_CACHE") or Path.home() / ".cache" / "emofer")


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The exported model of a run folder (``path/model``), or ``path`` itself when it is not a run folder."""
    path = Path(path)
    return path / MODEL_DIR if (path / MODEL_DIR / "config.yaml").exists() else path
