"""How well the ``score`` read-out's confidences match its accuracy: ECE, reliability bins, temperature.

The ``score`` read-out gives a log-likelihood for every candidate label. A
softmax over them (divided by a temperature ``T``) is the model's
probability of each label; its top probability is the *confidence*.

- **Expected calibration error** (torchmetrics' ``MulticlassCalibrationError``,
  L1 norm): confidences are put into ``n_bins`` equal-width bins
  ``[0, 1/n), [1/n, 2/n), ...``; ECE is the sample-weighted mean over the bins
  of ``|accuracy - mean confidence|``.
- **Temperature scaling** (Guo et al., 2017): one scalar ``T > 0`` fitted by
  minimising the negative log-likelihood of the true labels on a validation
  split; applied at test time as ``softmax(scores / T)``. It never changes a
  prediction (the arg-max is the same), only how sure the model says it is.

Example:
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1, 1]), n_bins=4), 4)
    0.15
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dimension."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.softmax(logits.double() / temperature, dim=-1)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (L1, equal-width bins) of class probabilities ``[N,C]`` against true indices ``[N]`` (torchmetrics)."""
    from torchmetrics.classification import MulticlassCalibrationError

    if probs.ndim != 2 or probs.shape[0] != targets.shape[0]:
        raise ValueError(f"probs must be [N,C] with N = len(targets); got {tuple(probs.shape)}, {len(targets)} targets")
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(probs.float(), targets.long()))


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per confidence bin ``[lo, hi)`` (the last one closed): ``lo``, ``hi``, ``count``, mean
    ``confidence`` and ``accuracy`` (None for an empty bin) — what a reliability diagram draws."""
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == targets.long()).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        out.append({
            "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
            "confidence": float(confidence[mask].mean()) if n else None,
            "accuracy": float(correct[mask].mean()) if n else None,
        })
    return out


def nll(logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], temperature: float) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / T)``, over all sets pooled."""
    total = sum(
        float(torch.nn.functional.cross_entropy(z.double() / temperature, y.long(), reduction="sum"))
        for z, y in zip(logits, targets, strict=True)
    )
    return total / max(1, sum(len(y) for y in targets))


def fit_temperature(
    logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], bounds: tuple[float, float] = (1e-2, 1e2)
) -> float:
    """The temperature minimising the pooled NLL of validation samples (one scalar for all sets).

    ``logits`` and ``targets`` are lists, one entry per validation set (sets may
    have different numbers of classes). The NLL is convex in ``1/T``, so a
    golden-section search over ``log T`` within ``bounds`` finds its minimum.
    """
    if not logits or sum(len(y) for y in targets) == 0:
        raise ValueError("fitting a temperature needs validation samples with scores")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    for _ in range(80):  # the bracket shrinks by 0.618 a step: 80 steps reach float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, targets, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, targets, math.exp(b))
    return math.exp((lo + hi) / 2)


def reliability_diagram(
    bins: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "", ece: float | None = None
) -> None:
    """A PNG: accuracy per confidence bin (bars), each bin's mean confidence (red ticks) and the
    diagonal, with the samples per bin below."""
    from matplotlib.figure import Figure

    from emofer.config import atomic_write_bytes

    fig = Figure(figsize=(3.6, 4.2), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins[0]["hi"] - bins[0]["lo"]
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    filled = [b for b in bins if b["count"]]
    top.bar([(b["lo"] + b["hi"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=width * 0.95,
            color="tab:blue", edgecolor="white", label="accuracy")
    top.scatter([(b["lo"] + b["hi"]) / 2 for b in filled], [b["confidence"] for b in filled], s=120, marker="_",
                color="tab:red", linewidths=2, zorder=3, label="mean confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=7, loc="upper left", frameon=False)
    top.set_title(title + ("" if ece is None else f"\nECE {ece:.4f}"), fontsize=8)
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="tab:grey")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("samples")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
