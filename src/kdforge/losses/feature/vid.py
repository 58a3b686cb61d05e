"""Variational information distillation: the teacher feature's likelihood (Ahn et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import match_spatial
from kdforge.losses.base import LayerPairTerm, layers_repr, register_loss, sum_terms
from kdforge.losses.feature.shared import _as_map, _assert_built, _check_pair, _conv, _layer_lists


class VIDHead(nn.Module):
    """VID's Gaussian for one layer pair: the mean regressor ``mu`` (``1x1`` convolution ->
    ReLU -> ``1x1`` -> ReLU -> ``1x1``, no biases) and per-channel variances
    ``sigma^2 = softplus(alpha) + eps``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, rank: int, init_var: float,
                 eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv(rank, c_in, c_mid, 1, bias=False), nn.ReLU(),
            _conv(rank, c_mid, c_mid, 1, bias=False), nn.ReLU(),
            _conv(rank, c_mid, c_out, 1, bias=False),
        )
        # softplus(alpha) = init_var - eps, so sigma^2 starts at init_var
        alpha = math.log(math.expm1(init_var - eps))
        self.alpha = nn.Parameter(torch.full((c_out,), alpha))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha.float()) + self.eps


@register_loss("vid", source='Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information '
                             'Distillation for Knowledge Transfer" (CVPR)')
class VID(LayerPairTerm):
    """Variational information distillation: Gaussian likelihood of the teacher's feature.

    Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information Distillation for
    Knowledge Transfer" (CVPR). A lower bound on the mutual information between the
    student's and the teacher's features, maximised through a Gaussian ``q(t | s)`` with
    mean ``mu(s)`` (a :class:`VIDHead` regressor) and learned per-channel variances
    ``sigma_c^2 = softplus(alpha_c) + eps``:

    ``L = 1/N sum_{b,c,pos} 0.5 * ( log sigma_c^2 + (t - mu(s))^2 / sigma_c^2 )``,

    the negative log-likelihood (without the constant ``0.5 log 2 pi``), averaged over all
    ``N`` elements and summed over layer pairs. Its minimum is not 0: for ``mu(s) = t`` it is
    ``0.5 * mean_c log sigma_c^2``, which the variances then lower. Defaults as the authors'
    and the CRD code: ``init_var = 5`` (``sigma^2`` at initialisation), ``eps = 1e-5``,
    middle width = the teacher's channels; CRD benchmark weight 1.

    Shapes: maps ``(B, C, L)`` / ``(B, C, H, W)`` or vectors ``(B, D)`` (maps with one
    position), the same rank per pair; the student is resized to the teacher's positions.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, mid_channels: int | None = None,
                 init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if mid_channels is not None and not (isinstance(mid_channels, int) and mid_channels >= 1):
            raise ConfigError(f"vid: mid_channels must be a positive integer, got {mid_channels}")
        if not eps > 0:
            raise ConfigError(f"vid: eps must be > 0, got {eps}")
        if not init_var > eps:
            raise ConfigError(f"vid: init_var must be > eps ({eps}), got {init_var}")
        self.mid_channels = mid_channels
        self.init_var = float(init_var)
        self.eps = float(eps)
        self.heads: nn.ModuleList | None = None

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=True)
        if self.heads is None:
            self.heads = nn.ModuleList(
                VIDHead(s.shape[1], self.mid_channels or t.shape[1], t.shape[1],
                        _as_map(t).dim(), self.init_var, self.eps).to(s.device)
                for s, t in zip(ss, ts, strict=True)
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.heads)
        assert self.heads is not None
        ss, ts = self.layer_features(student, teacher)
        values = []
        for head, s, t in zip(self.heads, ss, ts, strict=True):
            t = _as_map(t).float()
            mu = head.regressor(match_spatial(_as_map(s).float(), tuple(t.shape[2:]))).float()
            var = head.variance().view(1, -1, *([1] * (t.dim() - 2)))
            value = (0.5 * (var.log() + (t - mu).pow(2) / var)).mean()
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, init_var={self.init_var:g}, eps={self.eps:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")
