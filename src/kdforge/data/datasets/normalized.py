"""Input normalisation: ``x' = (x - mean_c) / std_c`` per channel, for every split alike.

``data.normalize`` in a run config (see :class:`kdforge.config.DataConfig`) is one of:

* ``null`` (default): inputs as the data set gives them;
* ``auto``: the per-channel mean and (population) standard deviation of the data set's
  training set as loaded (:func:`~kdforge.data.datasets.splits.mean_std`), before the
  ``classes`` subset and the validation carve, so that runs that differ only in those
  (a teacher and its student) see the same transform. A constant channel (standard
  deviation 0) is only centred;
* ``{mean: [...], std: [...]}``: one value per channel (the first dimension of a sample:
  ``C`` of ``(C, H, W)`` or ``(C, L)``; a sample of shape ``(D,)`` is one channel).

:func:`normalize_splits` wraps the train, validation and test sets of a
:class:`~kdforge.data.datasets.base.DataSplits` in a :class:`NormalizedDataset`. The
wrapper normalises what the data set returns, so everything downstream (views and
augmentation, the soft-label store's fingerprint of the training split, evaluation)
sees normalised inputs: a store made with another normalisation is refused as made from
other inputs, and a store made without one still matches a run without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.data.datasets.base import DataSplits, Indices, LabeledDataset
from kdforge.data.datasets.splits import mean_std


def _channels(input_shape: Sequence[int]) -> int:
    return int(input_shape[0]) if len(input_shape) > 1 else 1


class NormalizedDataset:
    """A data set whose inputs are normalised per channel: ``(x - mean) / std``.

    Args:
        base: the data set read from (any :class:`LabeledDataset`).
        mean, std: ``(C,)`` tensors, ``C`` the channel count of ``base``'s samples.
    """

    def __init__(self, base: LabeledDataset, mean: Tensor, std: Tensor) -> None:
        self.base = base
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        c = _channels(base.input_shape)
        if self.mean.numel() != c or self.std.numel() != c:
            raise ConfigError(f"normalisation has {self.mean.numel()} means and "
                              f"{self.std.numel()} stds for samples of {c} channel(s)")
        trailing = max(len(base.input_shape) - 1, 0)
        self._shape = (c,) + (1,) * trailing if base.input_shape else ()

    @property
    def targets(self) -> Tensor:
        return self.base.targets

    @property
    def classes(self) -> list[str]:
        return list(self.base.classes)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    def __len__(self) -> int:
        return len(self.base)

    def _apply(self, x: Tensor, batched: bool) -> Tensor:
        shape = ((1,) if batched else ()) + self._shape
        mean, std = self.mean.reshape(shape or (1,)), self.std.reshape(shape or (1,))
        return (x.to(torch.float32) - mean) / std

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["input"] = self._apply(item["input"], batched=False)
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        items = dict(self.base.__getitems__(indices))
        items["input"] = self._apply(items["input"], batched=True)
        return items

    def subset(self, indices: Indices) -> NormalizedDataset:
        return NormalizedDataset(self.base.subset(indices), self.mean, self.std)

    def __repr__(self) -> str:
        return (f"NormalizedDataset({self.base!r}, mean={self.mean.tolist()}, "
                f"std={self.std.tolist()})")


def _given(spec: Any) -> tuple[Any, Any] | None:
    """``(mean, std)`` of a mapping or an object with those attributes, else None."""
    if isinstance(spec, Mapping):
        return (spec.get("mean"), spec.get("std")) if set(spec) == {"mean", "std"} else None
    if hasattr(spec, "mean") and hasattr(spec, "std"):
        return spec.mean, spec.std
    return None


def normalization_stats(spec: Any, train: LabeledDataset, name: str) -> tuple[Tensor, Tensor]:
    """The ``(mean, std)`` that ``spec`` (``"auto"`` or ``{mean, std}``) asks for, checked
    against the channel count of data set ``name`` (``ConfigError`` naming it)."""
    shape = tuple(train.input_shape)
    c = _channels(shape)
    if spec == "auto":
        mean, std = mean_std(train)
        return mean, torch.where(std > 0, std, torch.ones_like(std))
    given = _given(spec)
    if given is None:
        raise ConfigError(f"data.normalize must be null, 'auto' or {{mean: [...], std: [...]}} "
                          f"(one value per channel), got {spec!r}")
    values = []
    for key, value in zip(("mean", "std"), given, strict=True):
        try:
            tensor = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"data.normalize.{key} must be a list of numbers, one per "
                              f"channel, got {value!r}") from None
        if tensor.numel() != c:
            raise ConfigError(
                f"data.normalize.{key} has {tensor.numel()} value(s) but dataset {name!r} has "
                f"{c} channel(s) (samples of shape {list(shape)}); give {c} value(s)"
            )
        values.append(tensor)
    if not bool(torch.isfinite(values[0]).all()) or not bool((values[1] > 0).all()):
        raise ConfigError(f"data.normalize needs finite means and positive stds, got {spec!r}")
    return values[0], values[1]


def normalize_splits(splits: DataSplits, spec: Any) -> DataSplits:
    """``splits`` with train, validation (if any) and test normalised as ``spec`` says (see
    the module docstring); unchanged when ``spec`` is None."""
    if spec is None:
        return splits
    mean, std = normalization_stats(spec, splits.train, splits.name)

    def wrap(ds: LabeledDataset | None) -> NormalizedDataset | None:
        return None if ds is None else NormalizedDataset(ds, mean, std)

    return replace(splits, train=wrap(splits.train), test=wrap(splits.test), val=wrap(splits.val))


__all__ = ["NormalizedDataset", "normalization_stats", "normalize_splits"]
