"""Small plain models: an MLP, 1-D and 2-D CNNs for tiny inputs, logistic regression.

These are the students (and small teachers) of the quick benchmarks: digits 8x8,
MNIST-1D ``(1, 40)`` signals and flat feature vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.models.registry import (
    MODELS,
    expect_rank,
    flat_size,
    init_conv_bn,
    int_tuple,
    make_activation,
)

_RUMELHART1986 = 'Rumelhart, Hinton, Williams 1986, "Learning representations by back-propagating errors" (Nature)'
_GREYDANUS2020 = 'Greydanus 2020, "Scaling down Deep Learning" (MNIST-1D, arXiv:2011.14439)'
_LECUN1998 = (
    'LeCun et al. 1998, "Gradient-based learning applied to document recognition" (Proc. IEEE)'
)
_COX1958 = 'Cox 1958, "The regression analysis of binary sequences" (JRSS B)'


class MLP(nn.Module):
    """Multi-layer perceptron on the flattened input: ``(B, *input_shape) -> (B, K)``.

    Modules: ``flatten``, ``blocks.i`` (Linear -> activation -> Dropout, output
    ``(B, hidden[i])``), ``fc``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        activation_name: str = "relu",
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten(1)
        blocks: list[nn.Module] = []
        width = in_features
        for h in hidden:
            blocks.append(
                nn.Sequential(
                    nn.Linear(width, h),
                    make_activation("mlp", activation_name),
                    nn.Dropout(dropout),
                )
            )
            width = h
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, ...)`` with ``prod(...) == in_features``; returns ``(B, K)``."""
        return self.fc(self.blocks(self.flatten(x)))


class CNN1d(nn.Module):
    """Plain 1-D CNN: ``(B, C, L) -> (B, K)``.

    Modules: ``blocks.i`` (Conv1d with ``kernel_size // 2`` padding -> [BatchNorm1d] ->
    ReLU, output ``(B, channels[i], L_i)``), ``pool`` (``Flatten`` keeping the positions,
    as the MNIST-1D paper's CNN does, or global average / max pooling), ``fc``.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        num_classes: int,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        stride: int = 2,
        batchnorm: bool = True,
        pool: str = "flatten",
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in, l_out = in_channels, length
        for c in channels:
            layers: list[nn.Module] = [
                nn.Conv1d(c_in, c, kernel_size, stride, kernel_size // 2, bias=not batchnorm)
            ]
            if batchnorm:
                layers.append(nn.BatchNorm1d(c))
            layers.append(nn.ReLU(inplace=False))
            blocks.append(nn.Sequential(*layers))
            c_in = c
            # "same"-style padding keeps l_out >= 1 for any length
            l_out = (l_out + 2 * (kernel_size // 2) - kernel_size) // stride + 1
        self.blocks = nn.Sequential(*blocks)
        if pool == "flatten":
            self.pool: nn.Module = nn.Flatten(1)
            features = c_in * l_out
        elif pool in ("avg", "max"):
            pooling = nn.AdaptiveAvgPool1d(1) if pool == "avg" else nn.AdaptiveMaxPool1d(1)
            self.pool = nn.Sequential(pooling, nn.Flatten(1))
            features = c_in
        else:
            raise ConfigError(f"cnn1d: pool must be 'flatten', 'avg' or 'max'; got {pool!r}")
        self.fc = nn.Linear(features, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, L)``; returns ``(B, K)`` logits."""
        return self.fc(self.pool(self.blocks(x)))


class CNN2d(nn.Module):
    """Plain 2-D CNN for tiny images (e.g. 8x8 digits): ``(B, C, H, W) -> (B, K)``.

    Modules: ``blocks.i`` (3x3 conv -> [BatchNorm2d] -> ReLU, then 2x2 max pooling in
    every block but the last; output ``(B, channels[i], H / 2^i, W / 2^i)``), ``pool``
    (global average pooling), ``fc``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [nn.Conv2d(c_in, c, 3, 1, 1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=False))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; returns ``(B, K)`` logits."""
        return self.fc(self.pool(self.blocks(x)).flatten(1))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``(B, *input_shape) -> (B, K)``; modules ``flatten``, ``fc``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(x))


def _positive(name: str, option: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"model {name!r}: option {option!r} must be a positive int; got {value!r}"
        )
    return value


def _dropout(name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"model {name!r}: dropout must be in [0, 1); got {value!r}")
    return float(value)


@MODELS.register("mlp", source=_RUMELHART1986)
def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
    activation: str = "relu",
) -> MLP:
    """Multi-layer perceptron on the flattened input; hidden widths, dropout, activation."""
    widths = () if len(hidden) == 0 else int_tuple("mlp", "hidden", hidden)
    return MLP(flat_size(input_shape), num_classes, widths, _dropout("mlp", dropout), activation)


@MODELS.register("cnn1d", source=_GREYDANUS2020)
def cnn1d(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: Sequence[int] = (32, 32, 32),
    kernel_size: int = 5,
    stride: int = 2,
    batchnorm: bool = True,
    pool: str = "flatten",
) -> CNN1d:
    """1-D CNN for (C, L) signals such as MNIST-1D: strided conv-BN-ReLU blocks, flatten, linear."""
    c, length = expect_rank("cnn1d", input_shape, 2)
    return CNN1d(
        c,
        length,
        num_classes,
        int_tuple("cnn1d", "channels", channels),
        _positive("cnn1d", "kernel_size", kernel_size),
        _positive("cnn1d", "stride", stride),
        bool(batchnorm),
        pool,
    )


@MODELS.register("cnn2d", source=_LECUN1998)
def cnn2d(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: Sequence[int] = (32, 64),
    batchnorm: bool = True,
) -> CNN2d:
    """Small plain 2-D CNN for tiny images (8x8 digits): conv-BN-ReLU-maxpool blocks, linear."""
    c, h, w = expect_rank("cnn2d", input_shape, 3)
    widths = int_tuple("cnn2d", "channels", channels)
    if min(h, w) < 2 ** (len(widths) - 1):
        raise ConfigError(
            f"cnn2d: a {h}x{w} input is too small for {len(widths)} blocks (each but the last "
            f"halves the size); use at most {max(1, min(h, w).bit_length())} channels entries"
        )
    return CNN2d(c, num_classes, widths, bool(batchnorm))


@MODELS.register("logreg", source=_COX1958)
def logreg(num_classes: int, input_shape: tuple[int, ...]) -> LogisticRegression:
    """Logistic regression (flatten + linear), the no-hidden-layer baseline."""
    return LogisticRegression(flat_size(input_shape), num_classes)
