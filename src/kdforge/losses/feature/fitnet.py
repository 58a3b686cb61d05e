"""FitNets: a regressed student layer matches a teacher hint layer (Romero et al. 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import Regressor
from kdforge.losses.base import LossTerm, read_features, register_loss
from kdforge.losses.feature.shared import _assert_built, _check_pair, _single_layer


@register_loss("fitnet", source='Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR)')
class FitNet(LossTerm):
    """FitNets hint loss: MSE between a regressed student layer and a teacher layer.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin Deep
    Nets" (ICLR). The teacher's *hint* layer guides the student's *guided* layer through a
    learned regressor ``r`` (:class:`~kdforge.losses.adapters.Regressor`: a ``k x k``
    convolution + BatchNorm for maps, after matching the spatial size to the teacher's; a
    linear layer + BatchNorm for vectors):

    ``L = 1/N sum (r(F_s) - F_t)^2``, the mean over all ``N = B * C_t * positions`` elements.

    Shapes: ``F_s`` ``(B, C_s, *S_s)``, ``F_t`` ``(B, C_t, *S_t)`` with the same rank (maps
    ``(B, C, L)`` / ``(B, C, H, W)``, or vectors ``(B, D)``). The regressor is built in
    :meth:`setup`. The paper trains in two stages (hint, then KD); the CRD benchmark, as
    here, adds the hint loss to the cross-entropy with weight 100 in a single stage.
    """

    def __init__(self, weight: float = 100.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, kernel_size: int = 1) -> None:
        super().__init__(weight)
        self.student_layer, self.teacher_layer = _single_layer(
            self.name, student_layer, teacher_layer)
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise ConfigError(f"fitnet: kernel_size must be an odd integer >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.regressor: Regressor | None = None

    def student_features(self) -> list[str]:
        return [self.student_layer]

    def teacher_features(self) -> list[str]:
        return [self.teacher_layer]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        _check_pair(self.name, self.student_layer, s, self.teacher_layer, t, vectors=True)
        if self.regressor is None:
            self.regressor = Regressor.for_shapes(
                self.name, s.shape, t.shape, kernel_size=self.kernel_size).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.regressor)
        assert self.regressor is not None
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        return F.mse_loss(self.regressor(s.float()).float(), t.float())

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, student_layer={self.student_layer!r}, "
                f"teacher_layer={self.teacher_layer!r}, kernel_size={self.kernel_size}")
