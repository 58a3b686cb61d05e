"""The augmentation for a per-sample input shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdforge.core.errors import ConfigError
from kdforge.core.registry import call_with_checked_kwargs
from kdforge.data.augment.image import ImageAugment
from kdforge.data.augment.signal import SignalAugment


def make_augment(input_shape: Sequence[int], **options: Any) -> ImageAugment | SignalAugment:
    """The augmentation for samples of ``input_shape``, built with ``options``.

    ``(C, H, W)`` -> :class:`ImageAugment`, ``(C, L)`` -> :class:`SignalAugment`. Other
    ranks and options the chosen class does not take raise :class:`ConfigError`.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a tuple of ints; got {input_shape!r}") from None
    if any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape must have positive sizes; got {shape}")
    if len(shape) == 3:
        cls: type[ImageAugment] | type[SignalAugment] = ImageAugment
    elif len(shape) == 2:
        cls = SignalAugment
    else:
        raise ConfigError(
            f"no augmentation for per-sample input shape {shape}: supported shapes are "
            "(C, H, W) images (ImageAugment) and (C, L) signals (SignalAugment)"
        )
    return call_with_checked_kwargs("augmentation", cls.__name__, cls, options)


__all__ = ["make_augment"]
