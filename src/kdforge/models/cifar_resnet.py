"""CIFAR-style ResNets (He et al. 2016) in the layout the CRD paper's benchmark uses.

He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2:
a 3x3 stem, three stages of ``n`` basic blocks each (depth ``6n + 2``), stride 2 at the
start of stages 2 and 3, global average pooling and a linear classifier.

Widths follow Tian, Krishnan, Isola. "Contrastive Representation Distillation", ICLR 2020
(CRD): ``[16, 16, 32, 64]`` (stem, stage 1, 2, 3) for resnet8..resnet110 and
``[32, 64, 128, 256]`` for the 4x-wide resnet8x4 / resnet32x4. Stage shortcuts that change
shape use a 1x1 convolution + batch norm (the paper's option B).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.models.registry import MODELS, expect_rank, init_conv_bn

_HE2016 = 'He et al. 2016, "Deep Residual Learning for Image Recognition" (CVPR); widths as in Tian et al. 2020 (CRD)'


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # The block's last activation is a module, so the pre-activation sum (used by
        # activation-boundary and pre-ReLU feature distillation) can be tapped as
        # "layerN.i.relu@input".
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for small images: ``(B, C, H, W) -> (B, num_classes)`` logits.

    Modules: ``conv1``, ``bn1``, ``relu``, ``layer1`` (stride 1), ``layer2`` (stride 2),
    ``layer3`` (stride 2), ``avgpool`` (adaptive, so any ``H, W`` works, e.g. 8x8 digits or
    32x32 CIFAR), ``fc``. For a 32x32 input ``layer3`` gives ``(B, widths[3], 8, 8)``.

    Args:
        depth: ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: channels of the stem and the three stages.
        num_classes: number of logits.
        in_channels: channels of the input image.
    """

    def __init__(
        self, depth: int, widths: Sequence[int], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); "
                f"got {depth}"
            )
        if len(widths) != 4:
            raise ConfigError(f"CIFAR ResNet needs 4 widths (stem + 3 stages); got {widths}")
        n = (depth - 2) // 6
        self.depth = depth
        self.widths = tuple(widths)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; returns ``(B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _build(
    name: str, depth: int, widths: Sequence[int], num_classes: int, input_shape
) -> CifarResNet:
    c, _, _ = expect_rank(name, input_shape, 3)
    return CifarResNet(depth, widths, num_classes, in_channels=c)


def _register(name: str, depth: int, widths: Sequence[int], summary: str) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> CifarResNet:
        return _build(name, depth, widths, num_classes, input_shape)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = summary
    MODELS.add(name, factory, source=_HE2016)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(
        f"resnet{_depth}",
        _depth,
        _NARROW,
        f"CIFAR ResNet-{_depth}: {(_depth - 2) // 6} basic block(s) per stage, widths 16/32/64.",
    )
for _depth in (8, 32):
    _register(
        f"resnet{_depth}x4",
        _depth,
        _WIDE,
        f"CIFAR ResNet-{_depth}x4 (CRD): 4x wide, stem 32, stages 64/128/256.",
    )
