"""The store's batch source: a training set read together with its stored views' records.

:class:`StoreSource` is a :class:`kdforge.data.sources.DatasetSource` whose loader reads,
next to each batch of samples, everything replaying the batch's stored views needs
(:meth:`kdforge.store.StoreView.load`: records, soft labels, noise seeds, mixing partners),
in the DataLoader's workers when there are some, so the store's CPU work overlaps the
training step as in FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022). The source then applies the view (crops and mix) on the device.

Which view a sample replays in an epoch is :func:`kdforge.store.epoch_views`, a pure
function of (run seed, epoch); the loader asks for one :class:`EpochBatch` (epoch and
sample indices) per batch, which carries the epoch into persistent workers. So the views do
not depend on the number of workers, the process split or a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from kdforge.core.errors import ConfigError, StoreError
from kdforge.core.source import SourceContext
from kdforge.data.loaders import load_batch, loader_options, train_sampler
from kdforge.data.sources import DatasetSource
from kdforge.store.records import as_ids
from kdforge.store.replay import StoreView
from kdforge.store.seeds import epoch_views


@dataclass(frozen=True)
class EpochBatch:
    """The key of one training batch for data sets whose samples depend on the epoch."""

    epoch: int
    indices: list[int]


class EpochBatchSampler(Sampler[EpochBatch]):
    """The batches of a :class:`DistributedSampler`, each as one :class:`EpochBatch`.

    For data sets whose samples depend on the epoch (a store replay draws each sample's
    view per epoch): the key carries the epoch into DataLoader workers, which, persistent,
    hold a copy of the data set made before the epoch began. One key per batch, not per
    sample, so the epoch costs nothing per sample. The data set's ``__getitems__`` receives
    the :class:`EpochBatch`.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batches = BatchSampler(sampler, batch_size, drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[EpochBatch]:
        epoch = self.sampler.epoch
        return (EpochBatch(epoch, indices) for indices in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def keyed_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, drop_last: bool = False,
                 pin_memory: bool = False) -> DataLoader:
    """:func:`kdforge.data.loaders.train_loader`'s shuffled, sharded order, asking
    ``dataset`` for one :class:`EpochBatch` per batch (``__getitems__(EpochBatch(epoch,
    indices))``). ``batch_size`` is the global batch; call
    :func:`kdforge.data.loaders.set_epoch` before each epoch."""
    sampler = train_sampler(dataset, batch_size, seed=seed, rank=rank, world_size=world_size,
                            drop_last=drop_last)
    batches = EpochBatchSampler(sampler, batch_size // world_size, drop_last)
    return DataLoader(dataset, batch_sampler=batches, **loader_options(num_workers, pin_memory))


class StoreSamples(Dataset):
    """A training set read for a store replay: samples plus their views' record.

    The loader asks it for batches by :class:`EpochBatch` keys (epoch and sample indices);
    a batch is the data set's own batch (``input``, ``target``, ``index``) plus ``view``:
    the :class:`~kdforge.store.StoredViewRecord` that :meth:`StoreView.load` reads for the
    views :func:`~kdforge.store.epoch_views` draws for (``seed``, epoch).

    Args:
        view: the replaying :class:`StoreView`.
        dataset: the training set (sample ``i`` of the store is ``dataset[i]``).
        seed: the run's seed (the view draws depend on it and on the epoch).
    """

    def __init__(self, view: StoreView, dataset: Any, seed: int) -> None:
        if len(dataset) != view.store.num_samples:
            raise StoreError(
                f"the training set has {len(dataset)} samples but the store {view.store.path} "
                f"was made for {view.store.num_samples}; use the training set it was made from"
            )
        self.view, self.dataset, self.seed = view, dataset, int(seed)
        self._views: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def views(self, epoch: int) -> np.ndarray:
        """:func:`epoch_views` of ``epoch`` (kept while the epoch lasts)."""
        if self._views is None or self._views[0] != epoch:
            store = self.view.store
            table = epoch_views(self.seed, epoch, store.num_samples, self.view.repeats,
                                store.views_per_sample)
            self._views = (epoch, table.numpy())
        return self._views[1]

    def __getitems__(self, key: EpochBatch) -> dict[str, Any]:
        if not isinstance(key, EpochBatch):
            raise ConfigError(
                f"StoreSamples is read one batch at a time, keyed by EpochBatch(epoch, "
                f"indices); got {type(key).__name__} (read it with "
                "kdforge.store.keyed_loader)"
            )
        batch = load_batch(self.dataset, key.indices)
        index = batch.index if batch.index is not None else torch.as_tensor(key.indices)
        view_ids = self.views(key.epoch)[as_ids(index)].reshape(-1)
        return {"input": batch.inputs, "target": batch.targets, "index": index,
                "view": self.view.load(index, view_ids, checked=True)}

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """The batch of the one sample ``key = (epoch, index)``."""
        return self.__getitems__(EpochBatch(int(key[0]), [int(key[1])]))


class StoreSource(DatasetSource):
    """The batches of a run that learns from a soft-label store.

    A :class:`~kdforge.data.sources.DatasetSource` over the training set the store was made
    from, with ``view`` (a :class:`StoreView`) applied on the device; its loader reads
    :class:`StoreSamples` (the records of each batch's views, read in the workers).

    Args:
        dataset: the training set (sample ``i`` of the store is ``dataset[i]``).
        batch_size: the global batch size in loaded samples (each gives ``view.repeats``
            views).
        view: the replaying view.
        num_workers: DataLoader worker processes (0: load in this process).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, view: StoreView,
                 num_workers: int = 0) -> None:
        if not isinstance(view, StoreView):
            raise ConfigError(f"a store source replays a StoreView; got {type(view).__name__}")
        super().__init__(dataset, batch_size, view=view, num_workers=num_workers)
        self.store = view.store

    def make_loader(self, context: SourceContext) -> DataLoader:
        assert isinstance(self.view, StoreView)
        samples = StoreSamples(self.view, self.dataset, context.seed)
        return keyed_loader(samples, self.batch_size, seed=context.seed, rank=context.rank,
                            world_size=context.world_size, num_workers=self.num_workers,
                            pin_memory=context.device.type == "cuda")


__all__ = ["EpochBatch", "EpochBatchSampler", "StoreSamples", "StoreSource", "keyed_loader"]
