"""The model registry and the small checks every zoo factory shares."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.core.registry import Registry

MODELS: Registry = Registry("model")
"""Zoo models by name. Every entry is ``factory(num_classes, input_shape, **options)``."""

_RANK_LAYOUT = {1: "(D,)", 2: "(C, L)", 3: "(C, H, W)"}
_RANK_EXAMPLE = {1: "(784,)", 2: "(1, 40)", 3: "(3, 32, 32)"}
_RANK_MODELS = {
    1: "mlp or logreg",
    2: "cnn1d, mlp or logreg",
    3: "a resnet, wrn, mobilenetv2, cnn2d, mlp or logreg",
}


def expect_rank(name: str, input_shape: Sequence[int], rank: int) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple, or raise ``ConfigError`` if its rank is not ``rank``.

    ``input_shape`` is the shape of one sample without the batch dimension.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != rank:
        got = len(shape)
        raise ConfigError(
            f"model {name!r} expects input_shape of rank {rank} {_RANK_LAYOUT[rank]} "
            f"(one sample, no batch dimension), e.g. {_RANK_EXAMPLE[rank]}; got {shape} "
            f"of rank {got}. For inputs of rank {got} "
            f"{_RANK_LAYOUT.get(got, '')} use {_RANK_MODELS.get(got, 'mlp or logreg')}."
        )
    return shape


def flat_size(input_shape: Sequence[int]) -> int:
    """Number of features of one flattened sample: the product of ``input_shape``."""
    return int(math.prod(input_shape))


def int_tuple(name: str, option: str, value: int | Sequence[int]) -> tuple[int, ...]:
    """Read an option given as one int or a list/tuple of positive ints (YAML gives lists)."""
    items = (value,) if isinstance(value, int) else tuple(value)
    if not items or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ConfigError(
            f"model {name!r}: option {option!r} must be a positive int or a non-empty list of "
            f"positive ints; got {value!r}"
        )
    return items


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str, option_value: str) -> nn.Module:
    """A fresh activation module by name (never in place, so forward hooks see clean tensors)."""
    try:
        return _ACTIVATIONS[option_value]()
    except KeyError:
        raise ConfigError(
            f"model {name!r}: unknown activation {option_value!r}; choose one of "
            + ", ".join(_ACTIVATIONS)
        ) from None


def init_conv_bn(model: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions, unit scale / zero shift for batch norms.

    He et al. 2015, "Delving Deep into Rectifiers", as used by the ResNet and WRN papers.
    Linear layers keep PyTorch's default init.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
