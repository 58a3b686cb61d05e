"""Helpers shared by the feature terms: layer options, shape checks, adapter layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.losses.adapters import describe
from kdforge.losses.base import layer_pairs


def _single_layer(term: str, student_layer: str | None, teacher_layer: str | None
                  ) -> tuple[str, str]:
    s, t = layer_pairs(term, student_layer, teacher_layer, lists="no")
    return s[0], t[0]


def _layer_lists(term: str, student_layers: Sequence[str] | str | None,
                 teacher_layers: Sequence[str] | str | None,
                 student_layer: str | None = None, teacher_layer: str | None = None
                 ) -> tuple[list[str], list[str]]:
    """Both sides' layer names as two lists of the same length (one pair per position)."""
    return layer_pairs(term, student_layer, teacher_layer, student_layers, teacher_layers)


def _check_pair(term: str, s_name: str, s: Tensor, t_name: str, t: Tensor, *,
                vectors: bool, why: str = "") -> None:
    """Raise ``ShapeMismatchError`` (naming both layers and shapes) unless the two features
    are of one kind: both maps of the same rank, or (where ``vectors``) both ``(B, D)``."""
    ranks = (2, 3, 4) if vectors else (3, 4)
    kinds = ("(B, D), (B, C, L) or (B, C, H, W)" if vectors
             else "feature maps (B, C, L) or (B, C, H, W)")
    where = (f"{term}: student layer {s_name!r} gives {describe(tuple(s.shape))} and teacher "
             f"layer {t_name!r} gives {describe(tuple(t.shape))}")
    if s.dim() not in ranks or t.dim() not in ranks:
        raise ShapeMismatchError(
            f"{where}; this term needs {kinds} on both sides{why}: pick layers of that kind"
        )
    if s.dim() != t.dim():
        raise ShapeMismatchError(
            f"{where}; they are of different kinds (ranks {s.dim()} and {t.dim()}): pick "
            "layers of the same kind on both sides (both maps of the same rank"
            + (", or both vectors)" if vectors else ")")
        )
    if s.shape[0] != t.shape[0]:
        raise ShapeMismatchError(f"{where}; the batch sizes differ")


def _as_map(x: Tensor) -> Tensor:
    """``(B, D)`` -> ``(B, D, 1)`` (a map with one position); maps unchanged."""
    return x.unsqueeze(-1) if x.dim() == 2 else x


def _conv(rank: int, c_in: int, c_out: int, kernel_size: int = 1, bias: bool = True) -> nn.Module:
    """A stride-1, size-preserving convolution for maps of ``rank`` 3 (1-D) or 4 (2-D)."""
    conv = nn.Conv2d if rank == 4 else nn.Conv1d
    return conv(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=bias)


def _conv_transpose(rank: int, c_in: int, c_out: int) -> nn.Module:
    conv = nn.ConvTranspose2d if rank == 4 else nn.ConvTranspose1d
    return conv(c_in, c_out, 3, padding=1)


def _batchnorm(rank: int, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if rank == 4 else nn.BatchNorm1d(c)


def _assert_built(term: str, module: nn.Module | None) -> None:
    if module is None:
        raise ConfigError(
            f"{term}: its adapters are built by setup() from a first batch; use the term "
            "through a Distiller (which calls setup in prepare()) or call "
            "term.setup(student_outputs, teacher_outputs, batch) first"
        )
