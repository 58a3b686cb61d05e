"""Class subsets of a data set: a task of a lifelong sequence, a specialist's classes.

``select_classes(ds, [3, 5, 8])`` keeps the samples of classes 3, 5 and 8 and relabels
them 0, 1, 2 (in the order given). With ``rest="merge"`` the samples of every other class
are kept as one extra class (index 3 here: the "dustbin" class of Hinton et al.'s
specialists, 2015, sec. 5), optionally capped at ``rest_ratio`` merged samples per kept
sample, drawn with a private generator so the subset depends on its arguments alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.data.datasets.base import Indices, LabeledDataset, _index_tensor

REST_CLASS = "rest"


class RelabelledDataset:
    """A data set whose targets are mapped through ``mapping`` (old class -> new class).

    Samples are read from ``base``; only ``target`` (and ``targets``, ``classes``) change.
    """

    def __init__(self, base: LabeledDataset, mapping: Tensor, classes: Sequence[str]) -> None:
        self.base = base
        self.mapping = mapping.to(torch.int64)
        self.classes = list(classes)
        self.targets = self.mapping[base.targets]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["target"] = self.mapping[item["target"]]
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        items = dict(self.base.__getitems__(indices))
        items["target"] = self.mapping[items["target"]]
        return items

    def subset(self, indices: Indices) -> RelabelledDataset:
        return RelabelledDataset(self.base.subset(indices), self.mapping, self.classes)

    def __repr__(self) -> str:
        return f"RelabelledDataset({len(self)} samples, classes={self.classes})"


def select_classes(dataset: LabeledDataset, classes: Sequence[int], rest: str = "drop",
                   rest_ratio: float | None = None, seed: int = 0) -> RelabelledDataset:
    """The samples of ``classes``, relabelled ``0..n-1``; see the module docstring.

    Raises:
        ConfigError: a class outside the data set's range, an unknown ``rest``, or a subset
            with no samples.
    """
    k = dataset.num_classes
    bad = [c for c in classes if not 0 <= int(c) < k]
    if bad:
        raise ConfigError(f"data.classes {bad} are not classes of this data set (it has "
                          f"classes 0..{k - 1})")
    if rest not in ("drop", "merge"):
        raise ConfigError(f"data.rest must be 'drop' or 'merge', got {rest!r}")
    n = len(classes)
    mapping = torch.full((k,), n if rest == "merge" else -1, dtype=torch.int64)
    mapping[torch.as_tensor(list(classes), dtype=torch.int64)] = torch.arange(n)
    mapped = mapping[dataset.targets]
    kept = (mapped >= 0) & (mapped < n)
    keep = kept.nonzero().reshape(-1)
    if keep.numel() == 0:
        raise ConfigError(f"data.classes {list(classes)} select no sample")
    names = [dataset.classes[int(c)] for c in classes]
    if rest == "merge":
        others = (mapped == n).nonzero().reshape(-1)
        if rest_ratio is not None:
            cap = min(len(others), int(round(rest_ratio * keep.numel())))
            gen = torch.Generator().manual_seed(int(seed))
            others = others[torch.randperm(len(others), generator=gen)[:cap]]
        keep = torch.cat([keep, others]).sort().values
        names.append(REST_CLASS)
    idx = _index_tensor(keep, len(dataset))
    return RelabelledDataset(dataset.subset(idx), mapping.clamp_min(0), names)


__all__ = ["REST_CLASS", "RelabelledDataset", "select_classes"]
