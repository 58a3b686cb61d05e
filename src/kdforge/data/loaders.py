"""Batching: seeded, rank-aware loaders that yield :class:`kdforge.core.Batch` objects.

The same sampler serves one process and ``torchrun``: every epoch draws one global
permutation from ``seed + epoch`` and rank ``r`` of ``W`` takes positions ``r, r+W, ...``,
so the union of the ranks' ``i``-th batches is exactly the ``i``-th batch of a one-process
run with the same global batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch


def collate(items: Any) -> Any:
    """Keep batches that ``__getitems__`` already built; stack anything else."""
    if isinstance(items, dict):
        return items
    return default_collate(items)


def to_batch(obj: Any) -> Batch:
    """Map what a loader yields into a :class:`Batch`.

    Accepts our dict batches (``input``, ``target``, optional ``index``, ``teacher_input``,
    ``view``: what a batch source's loader prepared for its view, e.g. a soft-label store's
    records, see :class:`kdforge.store.StoreSource`), an existing ``Batch``, or the
    ``(inputs, targets)`` pairs of ordinary PyTorch data sets.
    """
    if isinstance(obj, Batch):
        return obj
    if isinstance(obj, dict):
        return Batch(obj["input"], obj.get("target"), obj.get("teacher_input"), obj.get("index"),
                     obj.get("view"))
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Tensor):
        targets = obj[1] if len(obj) > 1 else None
        return Batch(obj[0], targets)
    raise ConfigError(
        f"a data loader yielded a {type(obj).__name__}; yield (inputs, targets) pairs or dicts "
        "with 'input' and 'target'"
    )


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``W`` takes indices ``r, r+W, ...`` with no padding,
    so sums reduced over ranks count every sample exactly once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a shuffling loader which epoch begins (it reshuffles from ``seed + epoch``):
    calls ``set_epoch`` of its batch sampler if that has one (a loader keyed by epoch, as a
    soft-label store's), else of its sampler."""
    for sampler in (loader.batch_sampler, loader.sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return


def train_sampler(dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0,
                  world_size: int = 1, drop_last: bool = False) -> DistributedSampler:
    """The shuffling, rank-sharded sampler of :func:`train_loader` (see the module
    docstring); ``batch_size`` is the global batch and must divide over the ranks."""
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must be divisible by the "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    return DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
    )


def loader_options(num_workers: int, pin_memory: bool) -> dict[str, Any]:
    """The DataLoader settings every training loader shares (workers persist over epochs)."""
    return {"num_workers": num_workers, "collate_fn": collate, "pin_memory": pin_memory,
            "persistent_workers": num_workers > 0}


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A shuffling loader; ``batch_size`` is the *global* batch, split evenly over ranks.

    Call :func:`set_epoch` before each epoch (the trainer does).
    """
    sampler = train_sampler(dataset, batch_size, seed=seed, rank=rank, world_size=world_size,
                            drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler,
                      drop_last=drop_last, **loader_options(num_workers, pin_memory))


def eval_loader(
    dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, num_workers: int = 0
) -> DataLoader:
    """An in-order loader over this rank's shard (no padding, no duplicates)."""
    sampler = ShardSampler(len(dataset), rank, world_size)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate
    )


def load_batch(dataset: Dataset, indices: Sequence[int]) -> Batch:
    """The samples ``indices`` of a data set as one :class:`Batch` (with its
    ``__getitems__`` when it has one; dict samples or ``(x, y)`` pairs)."""
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(list(indices)) if getitems else [dataset[i] for i in indices]
    return to_batch(collate(items))


def first_batch(dataset: Dataset, size: int) -> Batch:
    """The first ``size`` samples as a batch (for shape checks before training)."""
    return load_batch(dataset, range(min(size, len(dataset))))  # type: ignore[arg-type]


__all__ = ["ShardSampler", "collate", "eval_loader", "first_batch", "load_batch",
           "loader_options", "set_epoch", "to_batch", "train_loader", "train_sampler"]
