"""Where the trainer's batches come from: the ``BatchSource`` contract.

A source is bound once to the run (device, seed, process rank) and then yields the batches
of one epoch at a time, on the training device. The same epoch contract holds for every
source: the batches of epoch ``e`` on rank ``r`` depend only on ``(seed, e, r)``, so a run
resumed at an epoch sees exactly the batches an uninterrupted run saw. Sources:

- :class:`kdforge.data.sources.DatasetSource`: a map-style data set (sharded over ranks,
  reshuffled per epoch) with an optional view applied on the device;
- :class:`kdforge.data.sources.GeneratorSource`: batches made by a function (noise for a
  generator network) with a declared number of steps per epoch, no data set behind it;
- the soft-label store's replay (:mod:`kdforge.store`), a data-set source that reads its
  records in the loader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from kdforge.core.outputs import Batch


@dataclass(frozen=True)
class SourceContext:
    """The run a source is bound to.

    Attributes:
        device: the training device batches are moved to.
        seed: the run's seed.
        rank, world_size: this process's place among ``torchrun`` processes.
        channels_last: lay 4-D inputs out channels-last.
    """

    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False


class BatchSource:
    """Base of the batch sources (see the module docstring)."""

    #: the number of training samples behind the source (``None``: a generator).
    num_samples: int | None = None

    def bind(self, context: SourceContext) -> None:
        """Attach the source to a run (called once by the trainer, before anything else)."""
        self.context = context

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        raise NotImplementedError

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        """The batches of ``epoch`` on the device. ``seed`` is the epoch's seed on this
        rank (the trainer has already seeded the global generators with it); a source
        that draws random numbers seeds its own generators from it."""
        raise NotImplementedError

    def probe(self, size: int) -> Batch:
        """A small batch on the device, as training will see it (views applied), for the
        step's shape checks before training."""
        raise NotImplementedError

    def ordered(self) -> Iterable[Batch] | None:
        """Every training sample once, in a fixed order, on the device (for terms that
        pretrain on the data); ``None`` if the source has no such pass."""
        return None

    def prepare_inputs(self, batch: Batch) -> Batch:
        """Lay inputs out as the run asks (channels-last for 4-D inputs)."""
        context = getattr(self, "context", None)
        if context is not None and context.channels_last and batch.inputs.dim() == 4:
            batch.inputs = batch.inputs.contiguous(memory_format=torch.channels_last)
            if batch.teacher_inputs is not None:
                batch.teacher_inputs = batch.teacher_inputs.contiguous(
                    memory_format=torch.channels_last)
        return batch


__all__ = ["BatchSource", "SourceContext"]
