"""Knowledge review: student stages fused deep-to-shallow (Chen et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import describe
from kdforge.losses.base import LayerPairTerm, layers_repr, register_loss, sum_terms
from kdforge.losses.feature.shared import _assert_built, _batchnorm, _conv, _layer_lists


class ABF(nn.Module):
    """ReviewKD's attention-based fusion for one stage (1-D or 2-D maps).

    ``x = BN(conv1x1(F_s))`` (``C_s -> mid``); at every stage but the deepest, the residual
    ``y`` from the deeper stage is resized (nearest) to ``x``'s positions and fused:
    ``[a0, a1] = sigmoid(conv1x1([x, y]))``, ``x = a0 * x + a1 * y``. Then ``x`` is resized
    (nearest) to the teacher's positions, becomes the next residual, and
    ``BN(conv3x3(x))`` (``mid -> C_t``) is the stage's output.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, rank: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv(rank, c_in, c_mid, 1, bias=False), _batchnorm(rank, c_mid))
        self.conv2 = nn.Sequential(_conv(rank, c_mid, c_out, 3, bias=False),
                                   _batchnorm(rank, c_out))
        self.att_conv = (nn.Sequential(_conv(rank, 2 * c_mid, 2, 1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, ...]
                ) -> tuple[Tensor, Tensor]:
        """Returns ``(output for the teacher comparison, residual for the next stage)``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            y = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, y], dim=1))
            x = x * att[:, 0:1] + y * att[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def hierarchical_context_loss(fs: Tensor, ft: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's HCL for one stage: the MSE at full resolution (weight 1) plus the MSE after
    adaptive average pooling to each level ``l`` smaller than the map's first spatial size
    (weights 1/2, 1/4, 1/8 in turn), divided by the sum of the weights used."""
    pool = F.adaptive_avg_pool2d if fs.dim() == 4 else F.adaptive_avg_pool1d
    loss = F.mse_loss(fs, ft)
    w, total = 1.0, 1.0
    for level in levels:
        if level >= fs.shape[2]:
            continue
        size = (level, level) if fs.dim() == 4 else level
        w /= 2.0
        loss = loss + w * F.mse_loss(pool(fs, size), pool(ft, size))
        total += w
    return loss / total


@register_loss("reviewkd", source='Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via '
                                  'Knowledge Review" (CVPR)')
class ReviewKD(LayerPairTerm):
    """Knowledge review: fuse student stages deep-to-shallow, compare each to the teacher's.

    Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via Knowledge Review" (CVPR). The
    student's stage features (shallow -> deep) pass through attention-based fusion modules
    (:class:`ABF`) from the deepest up, each fusing its stage with the residual of the
    deeper ones, so a shallow teacher stage is "reviewed" with deeper student knowledge.
    Each output ``O_i`` (the teacher's channels and positions) is compared with the
    teacher's stage ``i`` by the hierarchical context loss
    (:func:`hierarchical_context_loss`: MSE at full resolution and after pooling to 4, 2, 1
    positions per side, weights 1, 1/2, 1/4, 1/8 normalised by their sum):

    ``L = sum_i HCL(O_i, F_t^i)``.

    ``mid_channels`` defaults to ``min(512, C_s of the deepest stage)`` as in the authors'
    code. The paper uses weight 1 on CIFAR-100 beside CE; the authors' scripts use 0.6 to 8
    per teacher/student pair, ramped linearly over the first 20 of 240 epochs
    (``warmup_epochs`` of the schedule). Not in the CRD benchmark; default weight 1. The
    authors tap the teacher's stages before their last ReLU.

    Shapes: all stages maps of one rank, ``(B, C, L)`` or ``(B, C, H, W)``; a vector
    ``(B, D)`` (e.g. the pooled penultimate feature, the authors' last stage) counts as a
    map with one position.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None,
                 mid_channels: int | None = None) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers)
        if mid_channels is not None and not (isinstance(mid_channels, int) and mid_channels >= 1):
            raise ConfigError(
                f"reviewkd: mid_channels must be a positive integer, got {mid_channels}")
        self.mid_channels = mid_channels
        self.abfs: nn.ModuleList | None = None

    def _stages(self, student: Outputs, teacher: Outputs | None
                ) -> tuple[list[Tensor], list[Tensor]]:
        ss, ts = self.layer_features(student, teacher)
        names = self.student_layers + self.teacher_layers
        feats = ss + ts
        rank = max(max(f.dim() for f in feats), 3)
        for name, f in zip(names, feats, strict=True):
            if f.dim() not in (2, rank):
                shapes = ", ".join(f"{n!r} {describe(tuple(x.shape))}"
                                   for n, x in zip(names, feats, strict=True))
                raise ShapeMismatchError(
                    f"reviewkd: layer {name!r} gives {describe(tuple(f.shape))}, but the stages "
                    f"must all be maps of one rank, (B, C, L) or (B, C, H, W) (a vector (B, D) "
                    f"counts as one position); got {shapes}. Pick stages of one kind"
                )
            if f.shape[0] != feats[0].shape[0]:
                raise ShapeMismatchError(f"reviewkd: layer {name!r}: the batch sizes differ")

        def as_rank(x: Tensor) -> Tensor:
            return x.view(*x.shape, *([1] * (rank - x.dim()))) if x.dim() == 2 else x

        return [as_rank(s) for s in ss], [as_rank(t) for t in ts]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self._stages(student, teacher)
        if self.abfs is None:
            mid = self.mid_channels or min(512, ss[-1].shape[1])
            n = len(ss)
            self.abfs = nn.ModuleList(
                ABF(s.shape[1], mid, t.shape[1], s.dim(), fuse=i < n - 1).to(s.device)
                for i, (s, t) in enumerate(zip(ss, ts, strict=True))
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.abfs)
        assert self.abfs is not None
        ss, ts = self._stages(student, teacher)
        values = []
        residual = None
        for i in reversed(range(len(ss))):
            out, residual = self.abfs[i](ss[i].float(), residual, tuple(ts[i].shape[2:]))
            value = hierarchical_context_loss(out.float(), ts[i].float())
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, mid_channels={self.mid_channels}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")
