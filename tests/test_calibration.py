"""Calibration numbers checked against hand computations on fixed scores."""

from __future__ import annotations

import math

import pytest
import torch

from emofer.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    probabilities,
    reliability_bins,
    reliability_diagram,
)

# four samples, two classes; top confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (right)
PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
TARGETS = torch.tensor([0, 1, 1, 1])


def test_ece_matches_the_hand_computation():
    # 4 bins of width 0.25: {0.6, 0.7} -> confidence 0.65, accuracy 1/2; {0.9, 0.8} -> 0.85, accuracy 1
    # ECE = 2/4 * |0.5 - 0.65| + 2/4 * |1 - 0.85| = 0.075 + 0.075
    assert expected_calibration_error(PROBS, TARGETS, n_bins=4) == pytest.approx(0.15, abs=1e-6)
    # one bin: mean confidence 0.75, accuracy 3/4: perfectly calibrated on average
    assert expected_calibration_error(PROBS, TARGETS, n_bins=1) == pytest.approx(0.0, abs=1e-6)
    # 10 bins: each sample alone (0.6, 0.7, 0.8, 0.9): |0-0.6| + |1-0.7| + |1-0.8| + |1-0.9|, over 4
    assert expected_calibration_error(PROBS, TARGETS, n_bins=10) == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4, abs=1e-6)


def test_reliability_bins_hold_counts_confidences_and_accuracies():
    bins = reliability_bins(PROBS, TARGETS, n_bins=4)
    assert [b["count"] for b in bins] == [0, 0, 2, 2]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[2]["confidence"] == pytest.approx(0.65) and bins[2]["accuracy"] == pytest.approx(0.5)
    assert bins[3]["confidence"] == pytest.approx(0.85) and bins[3]["accuracy"] == pytest.approx(1.0)
    assert (bins[3]["lo"], bins[3]["hi"]) == (0.75, 1.0)
    # a confidence of exactly 1 falls into the last bin
    assert reliability_bins(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 4)[3]["count"] == 1
    # the sample-weighted gap of the bins is the ECE
    gap = sum(b["count"] / 4 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert gap == pytest.approx(expected_calibration_error(PROBS, TARGETS, 4), abs=1e-6)


def test_temperature_scaling_divides_the_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = torch.tensor([math.exp(1.0), 1.0, math.exp(-0.5)])
    assert torch.allclose(probabilities(logits, 2.0)[0], (expected / expected.sum()).double())
    with pytest.raises(ValueError, match="positive"):
        probabilities(logits, 0.0)


def test_fitted_temperature_matches_the_closed_form():
    # every sample scores [2, 0]; 3 of 4 are class 0. The NLL is lowest where
    # sigmoid(2 / T) = 3/4, i.e. T = 2 / ln 3.
    logits = torch.tensor([[2.0, 0.0]] * 4)
    targets = torch.tensor([0, 0, 0, 1])
    assert fit_temperature([logits], [targets]) == pytest.approx(2 / math.log(3), rel=1e-6)
    # as over-confident scores ten times larger: the same probabilities after a ten times larger T
    assert fit_temperature([10 * logits], [targets]) == pytest.approx(20 / math.log(3), rel=1e-6)


def test_fitted_temperature_pools_sets_with_different_classes():
    torch.manual_seed(0)
    a, b = 3 * torch.randn(40, 7), 3 * torch.randn(30, 11)
    ya, yb = (a + 3 * torch.randn(40, 7)).argmax(1), (b + 3 * torch.randn(30, 11)).argmax(1)  # right more often than not
    t = fit_temperature([a, b], [ya, yb])
    grid = [0.1 * 1.02**k for k in range(300)]
    best = min(grid, key=lambda g: nll([a, b], [ya, yb], g))
    assert 0.1 < t < 30 and t == pytest.approx(best, rel=0.021)  # within the grid's own step
    assert nll([a, b], [ya, yb], t) <= nll([a, b], [ya, yb], 1.0)


def test_reliability_diagram_png(tmp_path):
    reliability_diagram(reliability_bins(PROBS, TARGETS, 4), tmp_path / "r.png", title="fixed", ece=0.15)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
