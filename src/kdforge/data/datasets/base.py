"""The data set contract, the registry of named loaders, and the checks their options share.

See :mod:`kdforge.data.datasets` for the sample/batch contract.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, DataError
from kdforge.core.registry import Registry, call_with_checked_kwargs
from kdforge.data.datasets.options import check_option_types, check_renamed

Indices = Sequence[int] | Tensor | np.ndarray


@runtime_checkable
class LabeledDataset(Protocol):
    """What every kdforge data set provides (the contract: :mod:`kdforge.data.datasets`)."""

    targets: Tensor
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]: ...

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def subset(self, indices: Indices) -> LabeledDataset: ...


# -- index and option checks -----------------------------------------------------------------------


def _index_tensor(indices: Indices, n: int) -> Tensor:
    """``indices`` as a 1-D int64 tensor of non-negative positions below ``n``.

    Negative positions count from the end, as in Python; anything out of range raises
    ``IndexError`` (so the data sets behave like sequences).
    """
    raw = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    idx = torch.where(raw < 0, raw + n, raw)
    bad = (idx < 0) | (idx >= n)
    if bool(bad.any()):
        raise IndexError(f"index {int(raw[bad][0])} is out of range for a data set of {n} samples")
    return idx


def _position(i: Any, n: int) -> int:
    """A single index (int-like, may be negative) as a position in ``range(n)``."""
    try:
        pos = operator.index(i)
    except TypeError:
        raise TypeError(
            f"data set indices must be integers, not {type(i).__name__}; "
            "use __getitems__ or subset for several samples"
        ) from None
    if pos < 0:
        pos += n
    if not 0 <= pos < n:
        raise IndexError(f"index {i} is out of range for a data set of {n} samples")
    return pos


def _check_targets(targets: Tensor, n: int, classes: list[str] | None) -> list[str]:
    """Validate ``targets`` against ``n`` samples; return the class names to use."""
    if targets.ndim != 1 or targets.shape[0] != n:
        raise DataError(
            f"targets must have shape ({n},) to match the inputs, got {tuple(targets.shape)}"
        )
    if n and int(targets.min()) < 0:
        raise DataError("targets must be class indices >= 0; found a negative one")
    top = int(targets.max()) + 1 if n else 0
    if classes is None:
        return [str(k) for k in range(top)]
    classes = [str(c) for c in classes]
    if top > len(classes):
        raise DataError(
            f"targets go up to class {top - 1} but only {len(classes)} class names were given"
        )
    return classes


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}") from None
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {value}")
    return value


def _shape_option(name: str, value: Any) -> tuple[int, ...]:
    """A YAML/CLI shape option (int, list or tuple of ints) as a tuple of positive ints."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a tuple of positive ints, got {value!r}")
    if isinstance(value, int):
        value = (value,)
    try:
        shape = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ConfigError(f"{name} must be a tuple of positive ints, got {value!r}") from None
    if not shape or min(shape) <= 0:
        raise ConfigError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")
    return shape


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {out}")
    return out


# -- DataSplits & registry -------------------------------------------------------------------------


@dataclass
class DataSplits:
    """The train and test sets of a named data set, with what models need to know.

    Attributes:
        train: the training set (split off a validation set with :func:`split_train_val`
            unless ``val`` is given).
        test: the held-out test set (never used for model selection).
        num_classes: number of classes.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``.
        name: the registry name the splits were loaded under.
        source: where the data comes from (a citation, or ``"generated"``).
        val: an explicit validation set the data set provides (``arrays`` with ``val:``,
            ``image_folder`` with ``val_root:``); None: a run carves ``val_fraction`` of
            ``train`` instead (:func:`kdforge.api.build_data`).
    """

    train: LabeledDataset
    test: LabeledDataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    source: str
    val: LabeledDataset | None = None

    @property
    def classes(self) -> list[str]:
        """The class names, index ``k`` naming class ``k``."""
        return list(self.train.classes)


#: Named data set loaders: ``DATASETS.get(name)(**options) -> DataSplits``. Prefer
#: :func:`load_dataset`, which checks the options first.
DATASETS: Registry = Registry("dataset")


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load the data set registered as ``name`` with loader ``options``.

    >>> splits = load_dataset("synthetic", num_classes=3, num_train=30, num_test=9)
    >>> len(splits.train), len(splits.test), splits.input_shape
    (30, 9, (1, 8, 8))

    Raises:
        ConfigError: unknown ``name`` (with close matches), an option the loader does not
            take (listing the allowed ones), a renamed option (naming its new name), a
            missing required option, a value of the wrong type
            (:mod:`~kdforge.data.datasets.options`) or a bad value.
        DataError: the data files are missing or malformed.
    """
    factory = DATASETS.get(name)
    check_renamed(name, factory, options)
    check_option_types(name, factory, options)
    params = inspect.signature(factory).parameters
    required = [
        p
        for p, v in params.items()
        if v.default is inspect.Parameter.empty
        and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
        and p not in options
    ]
    if required and all(k in params for k in options):
        allowed = ", ".join(p for p in params)
        raise ConfigError(
            f"dataset {name!r} needs option(s) {', '.join(repr(r) for r in required)}; "
            f"allowed options: {allowed}"
        )
    return call_with_checked_kwargs("dataset", name, factory, options)


# -- the cache -------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where kdforge caches generated data: ``$KDFORGE_CACHE`` or ``~/.cache/kdforge``."""
    env = os.environ.get("KDFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdforge"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz next to ``path`` and move it into place (no half-written cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache may be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
