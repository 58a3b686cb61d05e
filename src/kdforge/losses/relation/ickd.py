"""Inter-channel correlation KD: each sample's channel correlation (Liu et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import Regressor, describe
from kdforge.losses.base import layer_pairs, register_loss
from kdforge.losses.relation.shared import _float32, _LayerPairTerm


def _channel_correlation(f: Tensor) -> Tensor:
    """``(B, C, *S)`` -> ``(B, C, C)``: ``F F^T`` over the positions, rows L2-normalised."""
    f = f.float().flatten(2)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), p=2, dim=2)


@register_loss("ickd", source='Liu et al. 2021, "Exploring Inter-Channel Correlation for '
                              'Diversity-Preserved Knowledge Distillation" (ICCV)')
class ICKD(_LayerPairTerm):
    """Inter-channel correlation KD: match each sample's channel-by-channel correlation.

    Liu, Huang, Lin, Xie, Wang, Chang & Liang 2021, "Exploring Inter-Channel Correlation
    for Diversity-Preserved Knowledge Distillation" (ICCV). The student's map ``(B, C_s,
    *S)`` first goes through a learned ``1x1`` convolution + BatchNorm to the teacher's
    ``C_t`` channels (built in :meth:`setup`, always, as in the authors' code; spatial
    sizes are matched to the teacher's). Per sample, with ``F`` ``(C, N)`` over the ``N``
    positions, ``G = row_l2_normalise(F F^T)`` ``(C, C)`` on each side, and

    ``L = 1/(B C) * sum_b ||G_s(b) - G_t(b)||_F^2``.

    The row normalisation and the ``1/(B C)`` are those of the authors' CIFAR-100 code
    (ICKD-C), for which its weight 2.5 (beside CE weight 1, without KD) was chosen; that is
    the default. They read the last feature map (before pooling). A ``(B, D)`` feature is
    taken as ``D`` channels at a single position (a degenerate but defined case: ``G`` is
    then the normalised outer product ``f f^T``).
    """

    def __init__(self, weight: float = 2.5, student_layer: str | None = None,
                 teacher_layer: str | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("ickd", student_layer, teacher_layer, None, None,
                                          lists="no"))
        self.adapter: Regressor | None = None

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        pairs = self._feature_pairs(student, teacher)
        self._check_batch(pairs)
        ((fs, ft),) = pairs
        s, t = describe(fs.shape), describe(ft.shape)
        if fs.dim() != ft.dim() or fs.dim() not in (2, 3, 4):
            raise ShapeMismatchError(
                f"ickd: student feature {self.student_layers[0]!r} {s} and teacher feature "
                f"{self.teacher_layers[0]!r} {t} must both be (B, C, H, W), (B, C, L) or "
                "(B, C); pick layers of the same kind on both sides"
            )
        if self.adapter is None:
            self.adapter = Regressor.for_shapes(self.name, tuple(fs.shape), tuple(ft.shape)
                                                ).to(fs.device)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        if self.adapter is None:
            raise ConfigError(
                "ickd: its 1x1 adapter is built from the first batch's shapes; run setup() "
                "(Distiller.prepare does) before computing the loss"
            )
        ((fs, ft),) = self._feature_pairs(student, teacher)
        fs = self.adapter(fs.float())
        if fs.dim() == 2:
            fs, ft = fs[:, :, None], ft[:, :, None]
        b, c = ft.shape[0], ft.shape[1]
        with _float32(fs):
            diff = _channel_correlation(fs) - _channel_correlation(ft)
            return diff.pow(2).sum() / (b * c)
