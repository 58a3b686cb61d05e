"""Neuron selectivity transfer: MMD between channels' activation patterns (Huang & Wang 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import match_spatial
from kdforge.losses.base import LayerPairTerm, layers_repr, register_loss, sum_terms
from kdforge.losses.feature.shared import _check_pair, _layer_lists


@register_loss("nst", source='Huang & Wang 2017, "Like What You Like: Knowledge Distill via '
                             'Neuron Selectivity Transfer" (arXiv:1707.01219)')
class NST(LayerPairTerm):
    """Neuron selectivity transfer: squared MMD between the channels' activation patterns.

    Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer". Each channel's map, flattened over the ``P`` positions and L2-normalised, is
    one sample ``f^i`` in ``R^P``; per sample ``b`` the student's ``C_s`` and the teacher's
    ``C_t`` channels are two sample sets, compared by the squared maximum mean discrepancy
    with the polynomial kernel ``k(x, y) = (x^T y + c)^d`` (``d = 2``, ``c = 0``):

    ``MMD^2 = 1/C_t^2 sum_{i,i'} k(t^i, t^i') + 1/C_s^2 sum_{j,j'} k(s^j, s^j')
    - 2/(C_s C_t) sum_{i,j} k(s^j, t^i)``,

    averaged over the batch and summed over layer pairs. The paper's objective is
    ``CE + lambda/2 * MMD^2``; the default weight 50 is the CRD benchmark's coefficient on
    ``MMD^2`` itself (as in the CRD code, which also keeps the teacher-teacher term).

    Shapes: ``(B, C, L)`` or ``(B, C, H, W)`` (same rank; channels may differ); the student
    map is resized to the teacher's positions. Vectors ``(B, D)`` have no positions and are
    refused (each normalised "pattern" would be a sign).
    """

    def __init__(self, weight: float = 50.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, degree: int = 2, c: float = 0.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if not (isinstance(degree, int) and degree >= 1):
            raise ConfigError(f"nst: degree must be an integer >= 1, got {degree}")
        if not c >= 0:
            raise ConfigError(f"nst: c must be >= 0, got {c}")
        self.degree = degree
        self.c = float(c)

    def _pairs(self, student: Outputs, teacher: Outputs | None) -> list[tuple[Tensor, Tensor]]:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=False,
                        why=" (it compares each channel's pattern over the positions; a vector "
                            "(B, D) has none)")
        return list(zip(ss, ts, strict=True))

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._pairs(student, teacher)

    def _kernel_mean(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean of ``k(a_i, b_j)`` over the batch and all channel pairs; ``a``, ``b``
        ``(B, C, P)``."""
        return (torch.bmm(a, b.transpose(1, 2)) + self.c).pow(self.degree).mean()

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        values = []
        for s, t in self._pairs(student, teacher):
            s = match_spatial(s.float(), tuple(t.shape[2:]))
            fs = F.normalize(s.flatten(2), dim=2)
            ft = F.normalize(t.float().flatten(2), dim=2)
            with torch.autocast(fs.device.type, enabled=False):  # the kernel in float32
                value = (self._kernel_mean(ft, ft) + self._kernel_mean(fs, fs)
                         - 2 * self._kernel_mean(fs, ft))
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, degree={self.degree}, c={self.c:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")
