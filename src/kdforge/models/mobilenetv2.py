"""MobileNetV2 (Sandler et al. 2018) with CIFAR-style strides for small images.

Sandler, Howard, Zhu, Zhmoginov, Chen. "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, Table 2: a 3x3 stem of 32 channels, seven stages of inverted
residual blocks ``(t, c, n, s)``, a 1x1 conv to 1280 channels, global pooling, linear.

For 32x32 inputs the stem and the second stage use stride 1 instead of 2 (overall stride
8 instead of 32), so 32x32 CIFAR images end at 4x4 and 8x8 digits at 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.models.registry import MODELS, expect_rank, init_conv_bn

_SANDLER2018 = (
    'Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR)'
)

# (expansion t, output channels c, repeats n, stride s of the first block); paper Table 2,
# with the stride of the 24-channel stage set to 1 for small images.
_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=False),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection [+ identity].

    ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``; the identity shortcut is used when
    ``stride == 1`` and ``C_in == C_out``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, 1, 1))
        layers.append(_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_identity = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_identity else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images: ``(B, C, H, W) -> (B, num_classes)`` logits.

    Modules: ``features.0`` (stem, stride 1), ``features.1`` .. ``features.7`` (the seven
    bottleneck stages of 16/24/32/64/96/160/320 channels times ``width_mult``, strides
    1, 1, 2, 2, 1, 2, 1), ``features.8`` (1x1 conv to the last channels: 1280, or
    ``1280 * width_mult`` if ``width_mult > 1``), ``pool``, ``dropout``, ``classifier``.
    For a 32x32 input ``features.7`` gives ``(B, 320 * width_mult, 4, 4)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"mobilenetv2 width_mult must be > 0; got {width_mult!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"mobilenetv2 dropout must be in [0, 1); got {dropout!r}")
        self.width_mult = width_mult
        c = _divisible(32 * width_mult)
        last = _divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        stages: list[nn.Module] = [_conv_bn_relu6(in_channels, c, 3, 1)]
        for t, channels, n, s in _STAGES:
            c_out = _divisible(channels * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
            stages.append(nn.Sequential(*blocks))
        stages.append(_conv_bn_relu6(c, last, 1, 1))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; returns ``(B, num_classes)`` logits."""
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@MODELS.register("mobilenetv2", source=_SANDLER2018)
def mobilenetv2(
    num_classes: int,
    input_shape: tuple[int, ...],
    width_mult: float = 1.0,
    dropout: float = 0.0,
) -> MobileNetV2:
    """MobileNetV2 with CIFAR strides (stem stride 1, overall stride 8); width_mult scales widths."""
    c, _, _ = expect_rank("mobilenetv2", input_shape, 3)
    return MobileNetV2(num_classes, in_channels=c, width_mult=width_mult, dropout=dropout)


@MODELS.register("mobilenetv2_x0_5", source=_SANDLER2018)
def mobilenetv2_x0_5(
    num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0
) -> MobileNetV2:
    """MobileNetV2 at half width (width_mult 0.5) with CIFAR strides, a small student."""
    c, _, _ = expect_rank("mobilenetv2_x0_5", input_shape, 3)
    return MobileNetV2(num_classes, in_channels=c, width_mult=0.5, dropout=dropout)
