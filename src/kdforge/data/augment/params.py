"""The recorded parameters of an augmentation draw, row by row (one row per sample)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError

Index = Tensor | int | slice | Sequence[int]
_P = TypeVar("_P", bound="_ParamsBase")


def _as_index(index: Index, device: torch.device) -> Tensor | slice:
    """A row index that keeps the leading dimension (an int selects a batch of one)."""
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        return torch.tensor([index], device=device)
    return torch.as_tensor(index, device=device)


class _ParamsBase:
    """Row-wise helpers shared by :class:`AugmentParams` and :class:`MixParams`.

    Every field is ``None`` or a tensor whose leading dimension is the batch size ``B``.
    """

    _required: tuple[str, ...] = ()
    _dtypes: dict[str, torch.dtype] = {}

    def __post_init__(self) -> None:
        sizes = {}
        for name, value in self._items():
            if not isinstance(value, Tensor) or value.dim() == 0:
                raise ConfigError(
                    f"{type(self).__name__}.{name} must be a tensor with a leading batch "
                    f"dimension; got {value!r}"
                )
            sizes[name] = value.shape[0]
        for name in self._required:
            if getattr(self, name) is None:
                raise ConfigError(f"{type(self).__name__}.{name} is required; got None")
        if len(set(sizes.values())) > 1:
            raise ConfigError(
                f"{type(self).__name__} fields disagree on the batch size: {sizes}; every "
                "field needs the same leading dimension"
            )

    def _items(self) -> list[tuple[str, Tensor]]:
        """(name, tensor) of the fields that are set, in declaration order."""
        pairs = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        return [(name, value) for name, value in pairs if value is not None]

    def __len__(self) -> int:
        items = self._items()
        return int(items[0][1].shape[0]) if items else 0

    def _replace(self: _P, fn: Any) -> _P:
        return type(self)(**{name: fn(value) for name, value in self._items()})

    def select(self: _P, index: Index) -> _P:
        """The rows ``index`` of every field (an int gives a batch of one, not a scalar row)."""
        return self._replace(lambda t: t[_as_index(index, t.device)])

    def to(self: _P, device: torch.device | str) -> _P:
        """The same parameters with every tensor on ``device``."""
        return self._replace(lambda t: t.to(device))

    @classmethod
    def cat(cls: type[_P], parts: Sequence[_P]) -> _P:
        """Concatenate parameters along the batch dimension (all parts set the same fields)."""
        parts = list(parts)
        if not parts:
            raise ConfigError(f"{cls.__name__}.cat needs at least one part; got an empty list")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        merged: dict[str, Tensor | None] = {}
        for name in names:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                merged[name] = None
            elif any(v is None for v in values):
                raise ConfigError(
                    f"{cls.__name__}.cat: field {name!r} is set in some parts and None in "
                    "others; concatenate parameters drawn by the same augmentation"
                )
            else:
                merged[name] = torch.cat(values)
        return cls(**merged)

    def as_dict(self) -> dict[str, Tensor]:
        """The fields that are set, name -> tensor (for storage; see :meth:`from_dict`)."""
        return dict(self._items())

    @classmethod
    def from_dict(cls: type[_P], data: dict[str, Any]) -> _P:
        """Rebuild parameters from :meth:`as_dict` output (arrays are converted to tensors).

        Missing optional fields become ``None``; unknown keys raise :class:`ConfigError`.
        Each field is cast to its canonical dtype, so stores may keep a narrower one.
        """
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}.from_dict: unknown keys {unknown}; allowed keys: "
                + ", ".join(names)
            )
        values = {}
        for name in names:
            value = data.get(name)
            if value is not None:
                value = torch.as_tensor(value).to(cls._dtypes[name])
            values[name] = value
        return cls(**values)


def _check_box(name: str, box: Tensor | None) -> None:
    """A box field is ``(B, 4)`` (images) or ``(B, 2)`` (signals), or absent."""
    if box is not None and (box.dim() != 2 or box.shape[1] not in (2, 4)):
        raise ConfigError(
            f"{name} must have shape (B, 4) for images or (B, 2) for signals; got "
            f"{tuple(box.shape)}"
        )


@dataclass
class AugmentParams(_ParamsBase):
    """The random parameters of one :class:`ImageAugment` or :class:`SignalAugment` draw.

    Attributes:
        crop: ``(B, 4)`` float32 ``(top, left, height, width)`` of the crop box as fractions
            of the image height/width for 2-D inputs; ``(B, 2)`` ``(start, length)`` as
            fractions of the signal length for 1-D inputs. ``None``: the whole input.
        flip: ``(B,)`` bool, horizontal flip (images) or time reversal (signals).
            ``None``: no flip.
        noise_seed: ``(B,)`` int64 seed of each sample's additive noise (signals only; see
            :func:`seeded_normal`). ``None``: no noise.
    """

    crop: Tensor | None = None
    flip: Tensor | None = None
    noise_seed: Tensor | None = None

    _dtypes = {"crop": torch.float32, "flip": torch.bool, "noise_seed": torch.int64}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_box("AugmentParams.crop", self.crop)

    @classmethod
    def identity(
        cls, batch_size: int, rank: int = 2, device: torch.device | str = "cpu"
    ) -> AugmentParams:
        """Parameters that leave a batch unchanged: the whole input, no flip, no noise.

        ``rank`` is the number of spatial dimensions: 2 for images, 1 for signals.
        """
        box = [0.0, 0.0, 1.0, 1.0] if rank == 2 else [0.0, 1.0]
        crop = torch.tensor(box, device=device).expand(batch_size, -1).clone()
        return cls(crop=crop, flip=torch.zeros(batch_size, dtype=torch.bool, device=device))


@dataclass
class MixParams(_ParamsBase):
    """The random parameters of one :class:`Mixup` draw.

    Attributes:
        partner: ``(B,)`` int64, the position within the batch of the image mixed into each
            sample. After :meth:`select` it still counts positions in the *original* batch;
            replay selected rows with :meth:`Mixup.apply_pair`.
        ratio: ``(B,)`` float32, the weight of the sample's own image (and label).
        box: ``(B, 4)`` ``(top, left, height, width)`` fractions (``(B, 2)``
            ``(start, length)`` for signals) of the region pasted from the partner; CutMix
            only, ``None`` for mixup.
    """

    partner: Tensor | None = None
    ratio: Tensor | None = None
    box: Tensor | None = None

    _required = ("partner", "ratio")
    _dtypes = {"partner": torch.int64, "ratio": torch.float32, "box": torch.float32}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_box("MixParams.box", self.box)


def _check_batch(params: _ParamsBase, x: Tensor, who: str) -> None:
    if len(params) not in (0, x.shape[0]):
        raise ConfigError(
            f"{who}: the parameters hold {len(params)} rows but the batch has {x.shape[0]}; "
            "select the rows of the samples you replay (params.select(index))"
        )



__all__ = ["AugmentParams", "Index", "MixParams"]
