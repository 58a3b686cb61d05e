"""Adapters that let a term compare features of different shapes, built from first-batch shapes.

Heterogeneous pairs (a ResNet teacher, a MobileNet or MLP student) rarely agree on channels,
widths or resolutions. A term builds its adapter in ``LossTerm.setup`` from the shapes of
the first batch, so the trainer hands its parameters to the optimizer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ShapeMismatchError


def describe(shape: tuple[int, ...] | list[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def match_spatial(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize the spatial dims of ``(B, C, *spatial)`` to ``size``: average pooling when
    shrinking, linear/bilinear interpolation when growing."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(a >= b for a, b in zip(x.shape[2:], size, strict=True)):
        pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool1d
        return pool(x, size)
    mode = "bilinear" if x.dim() == 4 else "linear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def as_embedding(x: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, D)`` by flattening (relation methods compare whole samples)."""
    return x.flatten(1)


def pooled_embedding(x: Tensor) -> Tensor:
    """``(B, C, *spatial)`` -> ``(B, C)`` by global average pooling; ``(B, D)`` unchanged."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


class Regressor(nn.Module):
    """Maps a student feature to a teacher feature's shape (FitNets' regressor).

    - ``(B, C, H, W)`` / ``(B, C, L)``: a ``1x1`` convolution (``kernel_size`` configurable)
      from the student's to the teacher's channels, then BatchNorm (as the CRD benchmark's
      regressors); spatial sizes are matched by :func:`match_spatial` first.
    - ``(B, D)``: a linear layer.

    Built with :meth:`for_shapes`, which raises ``ShapeMismatchError`` (naming both shapes)
    when the ranks differ.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...],
                 kernel_size: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        self.target_spatial = tuple(teacher_shape[2:])
        rank = len(student_shape)
        c_in, c_out = student_shape[1], teacher_shape[1]
        if rank == 2:
            self.proj: nn.Module = nn.Linear(c_in, c_out)
            self.norm: nn.Module = nn.BatchNorm1d(c_out) if batchnorm else nn.Identity()
        else:
            conv = nn.Conv2d if rank == 4 else nn.Conv1d
            norm = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
            self.proj = conv(c_in, c_out, kernel_size, padding=kernel_size // 2,
                             bias=not batchnorm)
            self.norm = norm(c_out) if batchnorm else nn.Identity()

    @classmethod
    def for_shapes(cls, term: str, student_shape, teacher_shape, **kwargs) -> Regressor:
        s, t = tuple(student_shape), tuple(teacher_shape)
        if len(s) != len(t) or len(s) not in (2, 3, 4):
            raise ShapeMismatchError(
                f"{term}: cannot map student feature {describe(s)} to teacher feature "
                f"{describe(t)}; both must be (B, D), (B, C, L) or (B, C, H, W) — pick layers "
                "of the same kind on both sides"
            )
        return cls(s, t, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() > 2:
            x = match_spatial(x, self.target_spatial)
        return self.norm(self.proj(x))


__all__ = ["Regressor", "as_embedding", "describe", "match_spatial", "pooled_embedding"]
