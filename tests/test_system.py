"""Metrics, the feature cache and the Lightning system."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from emofer.metrics import INVALID, expression_metrics, summarize

CLASSES = ["neutral", "happiness", "sadness", "surprise"]


def _random_preds(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g)


def test_metrics_match_torchmetrics_without_invalid_answers():
    preds, target = _random_preds(300, 4, seed=1)
    metrics = expression_metrics(4)
    metrics.update(preds[:100], target[:100])
    metrics.update(preds[100:], target[100:])
    v = summarize(metrics.compute(), CLASSES)
    assert v["war"] == pytest.approx(float(MulticlassAccuracy(4, average="micro")(preds, target)), abs=1e-6)
    assert v["uar"] == pytest.approx(float(MulticlassRecall(4, average="macro")(preds, target)), abs=1e-6)
    assert v["macro_f1"] == pytest.approx(
        float(MulticlassF1Score(4, average="macro")(preds, target)), abs=1e-6
    )
    per_class = MulticlassRecall(4, average="none")(preds, target).tolist()
    assert list(v["recall"].values()) == pytest.approx(per_class, abs=1e-6)
    assert v["invalid_rate"] == 0.0
    assert v["num_samples"] == 300


def test_invalid_answers_count_as_wrong_and_sit_in_the_last_confusion_column():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, INVALID, 1, 0, INVALID, INVALID])
    metrics = expression_metrics(3)
    metrics.update(preds, target)
    v = summarize(metrics.compute(), CLASSES[:3])
    assert v["war"] == pytest.approx(2 / 6)
    assert v["uar"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert v["invalid_rate"] == pytest.approx(3 / 6)
    assert v["confusion_columns"] == ["neutral", "happiness", "sadness", "invalid"]
    assert v["confusion"] == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 2]]
    # class 0: tp 1, fp 1 (a class-1 sample), fn 1 (the invalid); class 1: tp 1, fp 0, fn 1; class 2: 0
    assert v["macro_f1"] == pytest.approx((2 / 4 + 2 / 3 + 0.0) / 3)
    assert v["recall"]["sadness"] == 0.0


def test_uar_ignores_classes_without_samples():
    metrics = expression_metrics(4)
    metrics.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    v = summarize(metrics.compute(), CLASSES)
    assert v["uar"] == 1.0
    assert v["recall"]["surprise"] is None


def test_metric_states_are_sums_so_ddp_reduction_equals_one_process():
    preds, target = _random_preds(64, 4, seed=2)
    preds[::7] = INVALID
    whole = expression_metrics(4)
    whole.update(preds, target)
    shards = [expression_metrics(4) for _ in range(2)]
    shards[0].update(preds[::2], target[::2])
    shards[1].update(preds[1::2], target[1::2])
    # what torch.distributed's all_reduce(SUM) does to each state, done by hand
    for name, metric in shards[0].items(keep_base=True, copy_state=False):
        other = dict(shards[1].items(keep_base=True, copy_state=False))[name]
        for state in metric._defaults:
            assert metric._reductions[state].__name__ in ("dim_zero_sum",)
            setattr(metric, state, getattr(metric, state) + getattr(other, state))
    assert summarize(shards[0].compute(), CLASSES) == summarize(whole.compute(), CLASSES)


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [([0, 4], [0, 1], "predicted indices"), ([0, 1], [0, 5], "target indices"), ([0], [0, 1], "shape")],
)
def test_metrics_reject_out_of_range_indices(preds, target, match):
    with pytest.raises(ValueError, match=match):
        expression_metrics(4).update(torch.tensor(preds), torch.tensor(target))
