"""Reliability bins, ECE and the disagreement confusion on hand-made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from kdforge.report.calibration import disagreement, reliability, softmax


def logits_with_confidence(conf: float, predicted: int, k: int) -> np.ndarray:
    """Logits whose softmax puts ``conf`` on ``predicted`` and the rest evenly elsewhere."""
    rest = (1.0 - conf) / (k - 1)
    probs = np.full(k, rest)
    probs[predicted] = conf
    return np.log(probs)


def test_ece_by_hand():
    # 4 samples, 2 classes, 10 bins: confidences 0.95, 0.95 (one right, one wrong), 0.65, 0.65
    # (both right). Bin [0.9, 1.0): acc 0.5, conf 0.95; bin [0.6, 0.7): acc 1, conf 0.65.
    logits = np.stack([logits_with_confidence(0.95, 0, 2), logits_with_confidence(0.95, 1, 2),
                       logits_with_confidence(0.65, 0, 2), logits_with_confidence(0.65, 1, 2)])
    targets = np.array([0, 0, 0, 1])
    rel = reliability(logits, targets, num_bins=10)
    assert rel.count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert rel.accuracy[9] == pytest.approx(0.5) and rel.accuracy[6] == pytest.approx(1.0)
    assert rel.confidence[9] == pytest.approx(0.95) and rel.confidence[6] == pytest.approx(0.65)
    assert math.isnan(rel.accuracy[0])
    assert rel.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert rel.accuracy_total == pytest.approx(0.75)


def test_perfectly_confident_and_right_has_zero_ece():
    logits = np.eye(3) * 50.0
    rel = reliability(logits, np.arange(3))
    assert rel.ece == pytest.approx(0.0, abs=1e-9)
    assert rel.count[-1] == 3  # confidence 1.0 goes to the last bin


def test_ece_matches_torchmetrics_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 7)) * 3
    targets = rng.integers(0, 7, size=500)
    expected = MulticlassCalibrationError(7, n_bins=15, norm="l1")(
        torch.tensor(logits).float().softmax(-1), torch.tensor(targets))
    assert reliability(logits, targets).ece == pytest.approx(float(expected), abs=1e-5)


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p.sum(1), 1) and p[0, 0] == pytest.approx(1.0)


def test_disagreement_counts():
    teacher = np.eye(3)[[0, 0, 1, 2, 2, 2]]  # teacher classes 0 0 1 2 2 2
    student = np.eye(3)[[0, 1, 1, 0, 0, 1]]  # student classes 0 1 1 0 0 1
    dis = disagreement(teacher, student)
    assert dis.matrix.tolist() == [[0, 1, 0], [0, 0, 0], [2, 1, 0]]
    assert dis.count == 4 and dis.num_samples == 6 and dis.rate == pytest.approx(4 / 6)
    assert dis.top_pairs(2) == [(2, 0, 2), (0, 1, 1)]
    assert np.trace(dis.matrix) == 0
