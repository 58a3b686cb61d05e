"""Probabilistic knowledge transfer: the batch's neighbour distributions (Passalis & Tefas 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import as_embedding
from kdforge.losses.base import layer_pairs, register_loss
from kdforge.losses.relation.shared import _float32, _LayerPairTerm


def _cosine_conditional(f: Tensor, eps: float) -> Tensor:
    """``(B, B)``: ``p_{j|i}`` from the cosine kernel ``(cos + 1) / 2``, rows summing to 1."""
    e = as_embedding(f).float()
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss("pkt", source='Passalis & Tefas 2018, "Learning Deep Representations with '
                             'Probabilistic Knowledge Transfer" (ECCV)')
class PKT(_LayerPairTerm):
    """Probabilistic knowledge transfer: match the batch's cosine-kernel neighbour distributions.

    Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
    Transfer" (ECCV). With the features flattened to ``(B, D)`` and L2-normalised
    (``x / (||x|| + eps)``), the cosine kernel ``K_ij = (cos(x_i, x_j) + 1) / 2`` is turned
    into conditional probabilities ``p_{j|i} = K_ij / sum_k K_ik`` on each side, and

    ``L = 1/B^2 sum_i sum_j p^t_{j|i} log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))``,

    i.e. ``KL(teacher || student)`` of every row, averaged over the ``B^2`` entries
    (``eps = 1e-7``). The paper writes the plain double sum; the ``1/B^2`` is the CRD
    benchmark's (and the authors' PyTorch code's) normalisation, for which its weight
    30000 was chosen. Self-pairs ``j = i`` are kept as in that code. Widths need not match.
    The CRD benchmark reads the penultimate (pooled) embedding.
    """

    def __init__(self, weight: float = 30000.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, eps: float = 1e-7) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("pkt", student_layer, teacher_layer, None, None,
                                          lists="no"))
        if not eps > 0:
            raise ConfigError(f"pkt: eps must be > 0, got {eps}")
        self.eps = float(eps)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._check_batch(self._feature_pairs(student, teacher))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        ((fs, ft),) = self._feature_pairs(student, teacher)
        with _float32(fs):
            p_s = _cosine_conditional(fs, self.eps)
            p_t = _cosine_conditional(ft, self.eps)
            return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()
