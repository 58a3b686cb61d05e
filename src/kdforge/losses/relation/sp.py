"""Similarity-preserving KD: the batch's sample-similarity matrices (Tung & Mori 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import as_embedding
from kdforge.losses.base import layer_pairs, register_loss, sum_terms
from kdforge.losses.relation.shared import _float32, _LayerPairTerm


def _similarity_matrix(f: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, B)``: ``F F^T`` of the flattened features, rows L2-normalised."""
    e = as_embedding(f).float()
    return F.normalize(e @ e.t(), p=2, dim=1)


@register_loss("sp", source='Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (ICCV)')
class SP(_LayerPairTerm):
    """Similarity-preserving KD: match the batch's sample-similarity matrices.

    Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (ICCV). For a layer
    pair with features ``F_s`` ``(B, ...)`` and ``F_t`` ``(B, ...)`` flattened to ``(B, D_s)``
    and ``(B, D_t)``: ``G = row_l2_normalise(F F^T)`` ``(B, B)`` on each side and

    ``L = sum over layer pairs of 1/B^2 * ||G_s - G_t||_F^2``.

    Widths need not match (both ``G`` are ``B x B``), so there is no adapter. Options:
    ``student_layer``/``teacher_layer``, or lists ``student_layers``/``teacher_layers``
    (pairs compared in order, losses summed). The paper's default weight (gamma) is 3000,
    as in the CRD paper's CIFAR-100 benchmark, which reads the last feature map of each
    side (before pooling).
    """

    def __init__(self, weight: float = 3000.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, student_layers: list[str] | None = None,
                 teacher_layers: list[str] | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("sp", student_layer, teacher_layer, student_layers,
                                          teacher_layers, lists="either"))

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._check_batch(self._feature_pairs(student, teacher))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        values = []
        for fs, ft in self._feature_pairs(student, teacher):
            b = fs.shape[0]
            with _float32(fs):
                value = (_similarity_matrix(fs) - _similarity_matrix(ft)).pow(2).sum() / b**2
            values.append(value)
        return sum_terms(values)
