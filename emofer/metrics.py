"""Expression-recognition metrics as torchmetrics ``Metric``s, correct under DDP.

Every metric keeps sums as its state (``dist_reduce_fx="sum"``), so the
values computed after a distributed evaluation equal those of one process
seeing the same samples.

Invalid answers (a generated text that names no candidate label) are passed
as the prediction :data:`INVALID` (``-1``). They count as wrong for WAR, UAR
and F1 (a false negative of the true class, a false positive of no class),
and the confusion matrix keeps them in an extra last column named
``invalid``, so its shape is ``[C, C+1]`` (rows: true class; columns:
predicted class, then invalid).

Example:
    >>> import torch
    >>> metrics = expression_metrics(3)
    >>> metrics.update(torch.tensor([0, 1, -1, 2]), torch.tensor([0, 1, 1, 0]))
    >>> values = summarize(metrics.compute(), ["neutral", "happiness", "sadness"])
    >>> values["war"], values["invalid_rate"]
    (0.5, 0.25)
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

INVALID = -1
"""The prediction index of an invalid answer."""

SCALARS = ("war", "uar", "macro_f1", "invalid_rate")
"""The scalar metrics, in reporting order."""


class _ConfusionCounts(MulticlassConfusionMatrix):
    """Counts of (true class, predicted class or invalid) pairs, summed across processes.

    torchmetrics' ``MulticlassConfusionMatrix`` over ``C+1`` classes (the
    last one is "invalid") does the counting and the DDP reduction; this class
    adds the checks and the mapping of :data:`INVALID` to that last class.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        super().__init__(num_classes=num_classes + 1, validate_args=False, **kwargs)
        self.num_real = num_classes

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``preds`` and ``target`` are class indices ``[B]``; ``preds`` may be -1 (invalid)."""
        c = self.num_real
        preds = preds.detach().long().flatten().to(self.confmat.device)
        target = target.detach().long().flatten().to(self.confmat.device)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        if ((target < 0) | (target >= c)).any():
            raise ValueError(f"target indices must lie in [0, {c}), got {target.tolist()}")
        if ((preds < INVALID) | (preds >= c)).any():
            raise ValueError(f"predicted indices must lie in [0, {c}) or be {INVALID}, got {preds.tolist()}")
        super().update(torch.where(preds == INVALID, torch.full_like(preds, c), preds), target)

    @property
    def counts(self) -> torch.Tensor:
        """``[C, C+1]``: rows true class (never "invalid"), columns predicted class then invalid."""
        return self.confmat[: self.num_real]

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """True positives, false positives and false negatives per class."""
        cm = self.counts.double()
        tp = cm.diagonal()
        fp = cm[:, : self.num_real].sum(0) - tp
        fn = cm.sum(1) - tp
        return tp, fp, fn


class WeightedAverageRecall(_ConfusionCounts):
    """WAR: overall accuracy; invalid answers count as wrong."""

    def compute(self) -> torch.Tensor:
        total = self.counts.sum()
        return self.counts.diagonal().sum().double() / total.clamp(min=1)


class PerClassRecall(_ConfusionCounts):
    """Recall of each class ``[C]`` (NaN for a class without samples)."""

    def compute(self) -> torch.Tensor:
        tp, _, fn = self._stats()
        support = tp + fn
        return torch.where(support > 0, tp / support.clamp(min=1), torch.full_like(tp, float("nan")))


class UnweightedAverageRecall(_ConfusionCounts):
    """UAR: the mean recall over the classes that have samples."""

    def compute(self) -> torch.Tensor:
        tp, _, fn = self._stats()
        support = tp + fn
        present = support > 0
        if not present.any():
            return torch.tensor(0.0, dtype=torch.float64)
        return (tp[present] / support[present]).mean()


class MacroF1(_ConfusionCounts):
    """Macro F1 over the classes that were either true or predicted at least once."""

    def compute(self) -> torch.Tensor:
        tp, fp, fn = self._stats()
        denom = 2 * tp + fp + fn
        seen = denom > 0
        if not seen.any():
            return torch.tensor(0.0, dtype=torch.float64)
        return (2 * tp[seen] / denom[seen]).mean()


class ConfusionMatrix(_ConfusionCounts):
    """Counts ``[C, C+1]``: rows true class, columns predicted class then ``invalid``."""

    def compute(self) -> torch.Tensor:
        return self.counts.clone()


class InvalidRate(Metric):
    """The share of answers that name no candidate label."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("invalid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Adds a batch of predicted indices (``-1`` = invalid); ``target`` is ignored."""
        preds = preds.detach().flatten()
        self.invalid += (preds == INVALID).sum().to(self.invalid.device)
        self.total += preds.numel()

    def compute(self) -> torch.Tensor:
        return self.invalid.double() / self.total.clamp(min=1)


def expression_metrics(num_classes: int, prefix: str | None = None) -> MetricCollection:
    """WAR, UAR, macro F1, per-class recall, confusion matrix and invalid rate, as one collection.

    Args:
        num_classes: number of real classes (the invalid column is added on top).
        prefix: key prefix, e.g. ``"test/"``.
    """
    return MetricCollection(
        {
            "war": WeightedAverageRecall(num_classes),
            "uar": UnweightedAverageRecall(num_classes),
            "macro_f1": MacroF1(num_classes),
            "recall": PerClassRecall(num_classes),
            "confusion": ConfusionMatrix(num_classes),
            "invalid_rate": InvalidRate(),
        },
        prefix=prefix,
    )


def summarize(values: dict[str, torch.Tensor], classes: list[str], prefix: str = "") -> dict[str, Any]:
    """Turns a computed collection into plain JSON-able values.

    Returns:
        ``{"war", "uar", "macro_f1", "invalid_rate": float, "recall": {class: float | None},
        "confusion": list of rows, "confusion_columns": classes + ["invalid"], "num_samples": int}``.
    """
    get = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
    confusion = get["confusion"].tolist()
    recall = get["recall"].tolist()
    return {
        **{k: float(get[k]) for k in SCALARS},
        "recall": {c: (None if r != r else float(r)) for c, r in zip(classes, recall, strict=True)},
        "confusion": confusion,
        "confusion_columns": [*classes, "invalid"],
        "num_samples": int(sum(map(sum, confusion))),
    }
