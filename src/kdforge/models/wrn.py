"""Wide residual networks (Zagoruyko & Komodakis 2016).

Zagoruyko, Komodakis. "Wide Residual Networks", BMVC 2016: a 3x3 stem of 16 channels,
three groups of ``(depth - 4) / 6`` pre-activation basic blocks of widths
``16k, 32k, 64k`` (``k`` = widen factor, strides 1, 2, 2), then BN-ReLU, global average
pooling and a linear classifier. WRN-d-k in the paper is ``wrn(depth=d, widen_factor=k)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.models.registry import MODELS, expect_rank, init_conv_bn

_ZK2016 = 'Zagoruyko & Komodakis 2016, "Wide Residual Networks" (BMVC)'


class WideBasicBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut.

    ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``. When the shape changes, the shortcut is a
    1x1 convolution of the pre-activated input, as in the paper's reference code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k: ``(B, C, H, W) -> (B, num_classes)`` logits.

    Modules: ``conv1``, ``block1`` (``16k`` channels, stride 1), ``block2`` (``32k``,
    stride 2), ``block3`` (``64k``, stride 2; its output is before the final BN-ReLU),
    ``bn1``, ``relu``, ``avgpool`` (adaptive, any ``H, W``), ``fc``. For a 32x32 input
    ``block3`` gives ``(B, 64k, 8, 8)``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WRN depth must satisfy (depth - 4) % 6 == 0 with depth >= 10 "
                f"(10, 16, 22, 28, 40, ...); got {depth!r}"
            )
        if not isinstance(widen_factor, int) or widen_factor < 1:
            raise ConfigError(f"WRN widen_factor must be a positive int; got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"WRN dropout must be in [0, 1); got {dropout!r}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._group(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._group(widths[2], widths[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _group(c_in: int, c_out: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        blocks = [WideBasicBlock(c_in, c_out, stride, dropout)]
        blocks += [WideBasicBlock(c_out, c_out, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; returns ``(B, num_classes)`` logits."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("wrn", source=_ZK2016)
def wrn(
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: int = 40,
    widen_factor: int = 2,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet WRN-depth-widen_factor; (depth - 4) % 6 == 0."""
    c, _, _ = expect_rank("wrn", input_shape, 3)
    return WideResNet(depth, widen_factor, num_classes, in_channels=c, dropout=dropout)


def _register(depth: int, k: int) -> None:
    name = f"wrn_{depth}_{k}"

    def factory(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> WideResNet:
        c, _, _ = expect_rank(name, input_shape, 3)
        return WideResNet(depth, k, num_classes, in_channels=c, dropout=dropout)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Wide ResNet WRN-{depth}-{k}: {(depth - 4) // 6} blocks per group, widths {16 * k}/{32 * k}/{64 * k}."
    MODELS.add(name, factory, source=_ZK2016)


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_d, _k)
