"""Stratified splits (validation, test) and per-channel statistics of a data set."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DataSplits, LabeledDataset, _check_fraction


def _stratified_split(targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split positions into (kept, held out) with ``fraction`` of each class held out.

    The held-out total is ``N * fraction`` rounded half up; each class gets its proportional share
    rounded down and the leftover places go to the classes with the largest remainders
    (ties to the lower class index), so every class keeps its proportion as closely as
    integers allow. Uses a private generator seeded with ``seed``: the global RNGs are
    neither read nor advanced. Both outputs are sorted ascending.
    """
    n = int(targets.shape[0])
    num_classes = int(targets.max()) + 1 if n else 0
    counts = torch.bincount(targets, minlength=num_classes).tolist()
    exact = [c * fraction for c in counts]
    share = [math.floor(e) for e in exact]
    leftover = math.floor(n * fraction + 0.5) - sum(share)
    by_remainder = sorted(range(num_classes), key=lambda k: (-(exact[k] - share[k]), k))
    for k in by_remainder[: max(leftover, 0)]:
        share[k] += 1

    gen = torch.Generator().manual_seed(int(seed))
    kept: list[Tensor] = []
    held: list[Tensor] = []
    for k in range(num_classes):
        members = (targets == k).nonzero().reshape(-1)
        order = members[torch.randperm(len(members), generator=gen)]
        held.append(order[: share[k]])
        kept.append(order[share[k] :])
    empty = torch.empty(0, dtype=torch.int64)
    kept_all = torch.cat(kept).sort().values if kept else empty
    held_all = torch.cat(held).sort().values if held else empty
    return kept_all, held_all


def _split_or_error(
    dataset: LabeledDataset, fraction: float, seed: int, what: str
) -> tuple[LabeledDataset, LabeledDataset]:
    """Stratified (rest, held-out) subsets; ``ConfigError`` if a class or a side is emptied."""
    kept, held = _stratified_split(dataset.targets, fraction, seed)
    kept_counts = torch.bincount(
        dataset.targets.index_select(0, kept), minlength=dataset.num_classes
    )
    all_counts = torch.bincount(dataset.targets, minlength=dataset.num_classes)
    starved = [
        dataset.classes[k]
        for k in range(dataset.num_classes)
        if int(all_counts[k]) > 0 and int(kept_counts[k]) == 0
    ]
    if starved:
        raise ConfigError(
            f"{what}={fraction} leaves no training samples for class(es) "
            f"{', '.join(repr(c) for c in starved[:10])} (each has too few samples); "
            f"use a smaller {what}"
        )
    if held.numel() == 0:
        raise ConfigError(
            f"{what}={fraction} of {len(dataset)} samples rounds to no samples at all; "
            f"use a larger {what}, or 0 for no split"
        )
    return dataset.subset(kept), dataset.subset(held)


def split_train_val(
    dataset: LabeledDataset, val_fraction: float, seed: int
) -> tuple[LabeledDataset, LabeledDataset | None]:
    """Split ``dataset`` into stratified (train, validation) subsets.

    Each class contributes ``val_fraction`` of its samples to validation (rounded so the
    total is ``N * val_fraction`` rounded half up). The split depends only on the targets and
    ``seed`` (a private generator; the global RNGs are untouched). ``val_fraction=0``
    returns ``(dataset, None)``.

    Raises:
        ConfigError: ``val_fraction`` outside ``[0, 1)``, a class left with no training
            samples, or a fraction so small that validation would be empty.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if val_fraction == 0:
        return dataset, None
    return _split_or_error(dataset, val_fraction, seed, "val_fraction")


def train_and_val(
    splits: DataSplits, val_fraction: float, seed: int, *, default_fraction: float
) -> tuple[LabeledDataset, LabeledDataset | None]:
    """A run's (train, validation): the data set's explicit ``splits.val`` when it has one,
    else ``val_fraction`` of ``splits.train`` (:func:`split_train_val`).

    With an explicit validation set, ``val_fraction`` must be 0 or left at its default
    (``default_fraction``, then ignored): another value would carve a second validation set
    out of train, so it raises ``ConfigError`` saying to remove it.
    """
    if splits.val is None:
        return split_train_val(splits.train, val_fraction, seed)
    if float(val_fraction) not in (0.0, float(default_fraction)):
        raise ConfigError(
            f"dataset {splits.name!r} has an explicit validation set, so data.val_fraction="
            f"{val_fraction} would carve a second one out of train; remove data.val_fraction "
            "(or drop the data set's validation option to carve it instead)"
        )
    return splits.train, splits.val


def _iter_batches(dataset: LabeledDataset, batch_size: int) -> Iterator[Tensor]:
    """The inputs of ``dataset`` in order, ``batch_size`` samples at a time."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(dataset, ArrayDataset):  # slice the storage: no index copy
            yield dataset._as_float(dataset.inputs[start:stop])
        else:
            yield dataset.__getitems__(list(range(start, stop)))["input"]


def mean_std(dataset: LabeledDataset, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation of a data set's inputs.

    The channel is the first dimension of a sample (``C`` of ``(C, H, W)`` or ``(C, L)``);
    samples of shape ``(D,)`` count as one channel. Accumulates in float64 over batches,
    so it works for lazy data sets too (reading every image once).

    Returns:
        Two float32 tensors of shape ``(C,)``.
    """
    if len(dataset) == 0:
        raise DataError("mean_std of an empty data set is undefined")
    total = count = None
    total_sq = None
    for batch in _iter_batches(dataset, batch_size):
        x = batch.to(torch.float64)
        x = x.reshape(x.shape[0], 1, -1) if x.ndim <= 2 else x.reshape(x.shape[0], x.shape[1], -1)
        s = x.sum(dim=(0, 2))
        sq = (x * x).sum(dim=(0, 2))
        n = x.shape[0] * x.shape[2]
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count = n if count is None else count + n
    assert total is not None and total_sq is not None and count is not None
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return mean.to(torch.float32), var.sqrt().to(torch.float32)
