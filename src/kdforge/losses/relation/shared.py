"""Plumbing shared by the relation terms: float32 computation, layer pairs, batch checks."""

from __future__ import annotations

import torch
from torch import Tensor

from kdforge.core.errors import ShapeMismatchError
from kdforge.core.outputs import Outputs
from kdforge.losses.adapters import describe
from kdforge.losses.base import LayerPairTerm, layers_repr


def _float32(x: Tensor) -> torch.autocast:
    """A context that turns autocast off: the Gram matrices, distances and kernels here
    lose too much to cancellation in bf16/fp16, so they are computed in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class _LayerPairTerm(LayerPairTerm):
    """Plumbing shared by the relation terms: layer options, feature pairs, batch checks."""

    def _init_layers(self, student_layers: list[str], teacher_layers: list[str]) -> None:
        self.student_layers = student_layers
        self.teacher_layers = teacher_layers

    def _feature_pairs(self, student: Outputs, teacher: Outputs | None) -> list[tuple[Tensor, Tensor]]:
        return list(zip(*self.layer_features(student, teacher), strict=True))

    def _check_batch(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        for (fs, ft), s_name, t_name in zip(pairs, self.student_layers, self.teacher_layers,
                                            strict=True):
            if fs.shape[0] != ft.shape[0]:
                raise ShapeMismatchError(
                    f"{self.name}: student feature {s_name!r} {describe(fs.shape)} and teacher "
                    f"feature {t_name!r} {describe(ft.shape)} have different batch sizes; "
                    "both sides must see the same samples"
                )
            if fs.shape[0] < 2:
                raise ShapeMismatchError(
                    f"{self.name}: relations among samples need a batch of at least 2, got "
                    f"student feature {describe(fs.shape)} and teacher feature "
                    f"{describe(ft.shape)}"
                )

    def _layers_repr(self) -> str:
        if len(self.student_layers) == 1:
            return (f"student_layer={self.student_layers[0]!r}, "
                    f"teacher_layer={self.teacher_layers[0]!r}")
        return layers_repr(self.student_layers, self.teacher_layers)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, {self._layers_repr()}"
