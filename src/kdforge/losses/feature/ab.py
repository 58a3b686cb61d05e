"""Activation boundaries: which side of zero each neuron lies (Heo et al. 2019)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import match_spatial
from kdforge.losses.base import LayerPairTerm, layers_repr, register_loss, sum_terms
from kdforge.losses.feature.shared import (
    _as_map,
    _assert_built,
    _batchnorm,
    _check_pair,
    _conv,
    _layer_lists,
)

#: The authors' code (and the CRD repository) scales the summed alternative loss by 3/1000.
AB_SCALE = 3e-3


@register_loss("ab", source='Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of '
                            'Activation Boundaries Formed by Hidden Neurons" (AAAI)')
class AB(LayerPairTerm):
    """Activation-boundary transfer: a margin loss on which side of zero each neuron lies.

    Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons" (AAAI). On *pre-activation* features (before the
    ReLU), a connector ``r`` (``1x1`` convolution + BatchNorm, student -> teacher channels,
    after resizing to the teacher's positions) maps the student; the alternative (squared
    hinge) loss with margin ``m = 1`` is, per element,

    ``l = (r + m)^2 * 1[r > -m] * 1[t <= 0] + (r - m)^2 * 1[r <= m] * 1[t > 0]``

    and ``L = 3/1000 * sum_j w_j * (1/B) sum_elements l_j``, with layer weights
    ``w_j = 2^(j - n + 1)`` (1 for the deepest of ``n`` pairs, 1/2, 1/4, ... going
    shallower): the normalisation of the authors' code and of the CRD repository.
    ``L = 0`` exactly when every connector output is beyond the margin on the teacher's side
    (``r >= m`` where ``t > 0``, ``r <= -m`` where ``t <= 0``).

    Layers must be pre-activations: in kdforge's CIFAR ResNets ``"layer2.0.relu@input"``
    (a BasicBlock ends in its ``relu`` module); in ``cnn1d`` (``blocks.i`` = Conv, BN, ReLU)
    ``"blocks.i.1"`` or ``"blocks.i.2@input"``. The paper transfers in an initialisation
    stage (AB alone), then trains with the labels; the CRD benchmark does that (30 of 240
    epochs), then weight 0. Express it with a schedule: this term with ``stop_epoch: E`` and
    ``ce`` with ``start_epoch: E``. Shapes: maps or vectors ``(B, D)``, same rank per pair.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, margin: float = 1.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if not margin >= 0:
            raise ConfigError(f"ab: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.connectors: nn.ModuleList | None = None

    @property
    def layer_weights(self) -> list[float]:
        n = len(self.student_layers)
        return [2.0 ** (j - n + 1) for j in range(n)]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=True)
            if not bool((t < 0).any()):
                warnings.warn(
                    f"ab: teacher layer {tn!r} has no negative values: activation boundaries "
                    "need pre-activation features (before the ReLU), e.g. 'blocks.1.1' in "
                    "cnn1d or 'layer2.0.relu@input' in a CIFAR ResNet",
                    stacklevel=2,
                )
        if self.connectors is None:
            connectors = []
            for s, t in zip(ss, ts, strict=True):
                rank = _as_map(t).dim()
                connectors.append(nn.Sequential(
                    _conv(rank, s.shape[1], t.shape[1], 1, bias=False), _batchnorm(rank, t.shape[1])
                ).to(s.device))
            self.connectors = nn.ModuleList(connectors)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.connectors)
        assert self.connectors is not None
        ss, ts = self.layer_features(student, teacher)
        m = self.margin
        values = []
        for w, connector, s, t in zip(self.layer_weights, self.connectors, ss, ts, strict=True):
            t = _as_map(t).float()
            r = connector(match_spatial(_as_map(s).float(), tuple(t.shape[2:]))).float()
            off = (r + m).pow(2) * ((r > -m) & (t <= 0))
            on = (r - m).pow(2) * ((r <= m) & (t > 0))
            value = w * (off + on).sum() / t.shape[0]
            values.append(value)
        return AB_SCALE * sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, margin={self.margin:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")
