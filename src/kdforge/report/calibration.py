"""Calibration and disagreement from per-sample logits (numpy only).

Reliability diagram and expected calibration error follow Guo et al. 2017, "On Calibration
of Modern Neural Networks": the confidence of a prediction is its top softmax probability;
the samples are put in ``B`` equal-width confidence bins ``[b/B, (b+1)/B)`` (1.0 in the
last); each bin's accuracy is compared with its mean confidence and

    ECE = sum_b (n_b / N) * |acc_b - conf_b|

(the same binning as the ``ece`` of ``summary.json``, torchmetrics' L1 calibration error,
15 bins). The disagreement confusion counts, over the samples where the teacher's and the
student's top-1 classes differ, how often teacher class ``i`` became student class ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: bins of the reliability diagrams (as for summary.json's ``ece``)
NUM_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Reliability:
    """Per-bin ``count``, ``accuracy`` and ``confidence`` (NaN where a bin is empty), the
    bin ``edges`` ``(B + 1,)`` and the ``ece``; ``accuracy_total`` over all samples."""

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float
    accuracy_total: float

    @property
    def num_samples(self) -> int:
        return int(self.count.sum())


def reliability(logits: np.ndarray, targets: np.ndarray, num_bins: int = NUM_BINS) -> Reliability:
    """Reliability bins and ECE of ``(N, K)`` logits against ``(N,)`` labels."""
    probs = softmax(logits)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bin b holds confidences in [edges[b], edges[b+1]) (torchmetrics' bucketize, right=True)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.int64)
    acc_sum = np.bincount(index, weights=correct, minlength=num_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, acc_sum / count, np.nan)
        conf = np.where(count > 0, conf_sum / count, np.nan)
    n = max(1, len(confidence))
    ece = float(np.nansum(count / n * np.abs(acc - conf)))
    return Reliability(edges, count, acc, conf, ece, float(correct.mean()) if len(correct) else
                       float("nan"))


@dataclass
class Disagreement:
    """``matrix[i, j]``: samples the teacher put in class ``i`` and the student in ``j != i``."""

    matrix: np.ndarray
    num_samples: int

    @property
    def count(self) -> int:
        return int(self.matrix.sum())

    @property
    def rate(self) -> float:
        return self.count / self.num_samples if self.num_samples else float("nan")

    def top_pairs(self, n: int = 5) -> list[tuple[int, int, int]]:
        """The ``n`` most frequent (teacher class, student class, count), most first."""
        flat = np.argsort(-self.matrix, axis=None, kind="stable")[:n]
        pairs = [(int(i), int(j), int(self.matrix[i, j]))
                 for i, j in zip(*np.unravel_index(flat, self.matrix.shape), strict=True)]
        return [p for p in pairs if p[2] > 0]


def disagreement(teacher_logits: np.ndarray, student_logits: np.ndarray,
                 num_classes: int | None = None) -> Disagreement:
    """The confusion of teacher-student disagreements of ``(N, K)`` logits."""
    t = np.asarray(teacher_logits).argmax(axis=1)
    s = np.asarray(student_logits).argmax(axis=1)
    k = num_classes or np.asarray(student_logits).shape[1]
    matrix = np.zeros((k, k), dtype=np.int64)
    differ = t != s
    np.add.at(matrix, (t[differ], s[differ]), 1)
    return Disagreement(matrix, len(t))


__all__ = ["NUM_BINS", "Disagreement", "Reliability", "disagreement", "reliability", "softmax"]
