"""The batch sources of the trainer: a data set, or a function that makes batches.

See :mod:`kdforge.core.source` for the contract. Both sources here seed everything they
draw from the epoch's seed, so resuming at an epoch reproduces its batches exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, as_device
from kdforge.core.source import BatchSource, SourceContext
from kdforge.data.loaders import eval_loader, first_batch, set_epoch, to_batch, train_loader
from kdforge.data.views import View


class DatasetSource(BatchSource):
    """Batches of a map-style data set, shuffled per epoch and sharded over processes.

    Args:
        dataset: samples as dicts (``input``, ``target``, ``index``) or ``(x, y)`` pairs.
        batch_size: the global batch size (split over ``torchrun`` processes).
        view: the teaching setting applied to every training batch on the device, with
            random parameters drawn from a generator seeded per epoch and rank.
        num_workers: DataLoader worker processes (0: load in this process).

    Subclasses change what the loader reads with :meth:`make_loader` (the soft-label
    store's replay reads its records there, in the workers).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, view: View | None = None,
                 num_workers: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.view = view
        self.num_workers = num_workers
        self.num_samples = len(dataset)  # type: ignore[arg-type]

    def bind(self, context: SourceContext) -> None:
        super().bind(context)
        self.loader = self.make_loader(context)
        if len(self.loader) == 0:
            raise ConfigError("the training set is empty or smaller than one batch")
        self.generator = torch.Generator(device=context.device)

    def make_loader(self, context: SourceContext) -> DataLoader:
        """The training loader (subclasses may read another data set or batch keys)."""
        return train_loader(self.dataset, self.batch_size, seed=context.seed, rank=context.rank,
                            world_size=context.world_size, num_workers=self.num_workers,
                            pin_memory=context.device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def _view(self, batch: Batch) -> Batch:
        batch = batch if self.view is None else self.view(batch, self.generator)
        return self.prepare_inputs(batch)

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        self.generator.manual_seed(seed + 1)
        set_epoch(self.loader, epoch)
        device = self.context.device
        for raw in self.loader:
            yield self._view(as_device(to_batch(raw), device))

    def probe(self, size: int) -> Batch:
        return self._view(as_device(first_batch(self.dataset, min(8, size)), self.context.device))

    def ordered(self) -> Iterable[Batch]:
        loader = eval_loader(self.dataset, self.batch_size, num_workers=self.num_workers)
        for raw in loader:
            yield self.prepare_inputs(as_device(to_batch(raw), self.context.device))


class GeneratorSource(BatchSource):
    """Batches made by a function, with no data set behind them.

    Args:
        make: ``make(generator) -> Batch``: one batch, drawing its randomness from
            ``generator`` (a ``torch.Generator`` on the training device, seeded per epoch
            and rank). A generator network's noise, a synthetic curriculum.
        steps_per_epoch: batches per epoch (on each process).

    >>> source = GeneratorSource(noise_batches(64, (128,)), steps_per_epoch=50)
    """

    def __init__(self, make: Callable[[torch.Generator], Batch], steps_per_epoch: int) -> None:
        if steps_per_epoch <= 0:
            raise ConfigError(f"a generator source needs steps_per_epoch > 0, got {steps_per_epoch}")
        self.make = make
        self.steps_per_epoch = steps_per_epoch

    def bind(self, context: SourceContext) -> None:
        super().bind(context)
        self.generator = torch.Generator(device=context.device)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _draw(self) -> Batch:
        batch = self.make(self.generator)
        if not isinstance(batch, Batch):
            raise ConfigError(f"a generator source's function returned a {type(batch).__name__};"
                              " return a kdforge.Batch")
        return self.prepare_inputs(as_device(batch, self.context.device))

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        self.generator.manual_seed(seed + 1)
        for _ in range(self.steps_per_epoch):
            yield self._draw()

    def probe(self, size: int) -> Batch:
        state = self.generator.get_state()
        try:
            return self._draw()
        finally:
            self.generator.set_state(state)


def noise_batches(batch_size: int, shape: tuple[int, ...]) -> Callable[[torch.Generator], Batch]:
    """``make`` for a :class:`GeneratorSource`: standard normal ``(batch_size, *shape)``
    inputs (a generator network's latent codes) and no targets."""

    def make(generator: torch.Generator) -> Batch:
        z = torch.randn((batch_size, *shape), generator=generator, device=generator.device)
        return Batch(z)

    return make


def as_source(data: Any, batch_size: int, *, view: View | None = None,
              num_workers: int = 0) -> BatchSource:
    """A :class:`BatchSource` as it is, or a data set wrapped in a :class:`DatasetSource`."""
    if isinstance(data, BatchSource):
        if view is not None:
            raise ConfigError("give the view to the batch source itself, not beside it")
        return data
    return DatasetSource(data, batch_size, view=view, num_workers=num_workers)


__all__ = ["DatasetSource", "GeneratorSource", "as_source", "noise_batches"]
