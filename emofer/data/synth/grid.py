"""A picture of SynthFER: one row of samples per class (the figure in ``docs/data.md``)."""

from __future__ import annotations

import os
from pathlib import Path

from emofer.data.datasets.synthfer import SynthFER


def save_grid(
    path: str | os.PathLike[str],
    per_class: int = 8,
    split: str = "test",
    seed: int = 0,
    image_size: int = 64,
    difficulty: float = 0.5,
    dpi: int = 100,
) -> Path:
    """Draws ``per_class`` samples of each class in a row, labelled, and saves a PNG with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cls = len(SynthFER.classes)
    ds = SynthFER(split, size=n_cls * per_class, seed=seed, image_size=image_size, difficulty=difficulty)
    fig, axes = plt.subplots(n_cls, per_class, figsize=(per_class * 1.1 + 0.9, n_cls * 1.1), squeeze=False)
    for c, name in enumerate(ds.classes):
        for j in range(per_class):
            ax = axes[c][j]
            ax.imshow(ds[c + n_cls * j]["image"], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.04)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
