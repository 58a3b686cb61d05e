"""FSP: Gram ("flow") matrices between consecutive feature maps (Yim et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import describe, match_spatial
from kdforge.losses.base import layer_pairs, register_loss
from kdforge.losses.relation.shared import _float32, _LayerPairTerm


def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """The FSP ("flow of solution procedure") matrix of two feature maps of one network.

    ``a`` ``(B, C_a, *S_a)``, ``b`` ``(B, C_b, *S_b)`` -> ``(B, C_a, C_b)``:
    ``G[c, d] = 1/N sum_n a[c, n] b[d, n]`` over the ``N`` spatial positions, after average-
    pooling the larger map to the smaller spatial size (per dimension).
    """
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:], strict=True))
    a = match_spatial(a.float(), size).flatten(2)
    b = match_spatial(b.float(), size).flatten(2)
    return torch.einsum("bcn,bdn->bcd", a, b) / a.shape[2]


@register_loss("fsp", source='Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation: Fast '
                             'Optimization, Network Minimization and Transfer Learning" (CVPR)')
class FSP(_LayerPairTerm):
    """FSP: match the Gram ("flow") matrices between consecutive feature maps.

    Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning" (CVPR). For consecutive layers ``(i, i+1)``
    of ``student_layers`` (and likewise of ``teacher_layers``), with maps ``F_i``
    ``(B, C_i, h, w)`` (or ``(B, C_i, L)``), the FSP matrix is
    ``G = F_i^T F_{i+1} / (h w)`` ``(B, C_i, C_{i+1})`` (spatial sizes matched by adaptive
    average pooling to the smaller; :func:`fsp_matrix`) and

    ``L = mean over the pairs of mean_{b, c, d} (G_s - G_t)^2``.

    There is no adapter: the ``k``-th student layer must have the channel count of the
    ``k``-th teacher layer (``ShapeMismatchError`` otherwise); spatial sizes may differ
    between the sides. The paper's students are shallower networks of the teacher's widths
    (e.g. the ends of each ResNet stage).

    The paper trains in two stages: first the student's layers minimise the FSP loss alone,
    then the student trains on its task loss. In kdforge that is a weight schedule: this
    term with ``stop_epoch: E`` and ``ce`` (and ``kd``, if used) with ``start_epoch: E``
    (``configs/methods/fsp.yaml``). The CRD benchmark uses that init stage (30 of 240 epochs)
    and FSP weight 0 afterwards; the weight during the init stage is 1 (the default).
    """

    def __init__(self, weight: float = 1.0, student_layers: list[str] | None = None,
                 teacher_layers: list[str] | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("fsp", None, None, student_layers, teacher_layers,
                                          lists="yes"))
        if len(self.student_layers) < 2:
            raise ConfigError(
                "fsp: an FSP matrix relates two layers; give at least 2 student_layers and "
                f"teacher_layers (consecutive ones are paired), got {self.student_layers}"
            )

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        pairs = self._feature_pairs(student, teacher)
        for (fs, ft), s_name, t_name in zip(pairs, self.student_layers, self.teacher_layers,
                                            strict=True):
            s, t = describe(fs.shape), describe(ft.shape)
            if fs.dim() not in (3, 4) or ft.dim() not in (3, 4):
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} and teacher feature {t_name!r} {t}: "
                    "FSP needs feature maps (B, C, L) or (B, C, H, W); pick convolutional layers"
                )
            if fs.shape[0] != ft.shape[0]:
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} and teacher feature {t_name!r} {t} "
                    "have different batch sizes"
                )
            if fs.shape[1] != ft.shape[1]:
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} has {fs.shape[1]} channels but "
                    f"teacher feature {t_name!r} {t} has {ft.shape[1]}; FSP compares "
                    "channel-by-channel matrices and has no adapter: pair layers of equal "
                    "widths (a student with the teacher's widths, as in the paper)"
                )
        for feats, names, side in (([p[0] for p in pairs], self.student_layers, "student"),
                                   ([p[1] for p in pairs], self.teacher_layers, "teacher")):
            for i in range(len(feats) - 1):
                a, b, na, nb = feats[i], feats[i + 1], names[i], names[i + 1]
                if a.dim() != b.dim():
                    raise ShapeMismatchError(
                        f"fsp: {side} features {na!r} {describe(a.shape)} and {nb!r} "
                        f"{describe(b.shape)} have different ranks; pair maps of one kind"
                    )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        pairs = self._feature_pairs(student, teacher)
        fs = [p[0] for p in pairs]
        ft = [p[1] for p in pairs]
        with _float32(fs[0]):
            losses = [(fsp_matrix(fs[i], fs[i + 1]) - fsp_matrix(ft[i], ft[i + 1])).pow(2).mean()
                      for i in range(len(pairs) - 1)]
            return torch.stack(losses).mean()
