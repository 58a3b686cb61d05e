"""Training from a soft-label store: the teacher is never run (FKD, Shen & Xing 2022).

``StoreView`` draws, for every sample of a batch, one of the views stored for it, replays that
view's augmentation exactly (the crop and flip recorded in the store, the noise seed derived
from the store seed), and hands the view's record to ``StoredTeacher``, which returns the
stored soft label as ``Outputs`` (log-probabilities as logits, so a KD temperature still
applies). With ``repeats=m`` each loaded sample yields ``m`` views in the batch, as FKD's
multi-crop loading: the data loading cost per view falls by ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.data.augment import make_augment
from kdforge.data.views import View
from kdforge.teachers.base import Teacher
from kdforge.teachers.store import FILL_MODES, SoftLabelStore, StoreRecords


@dataclass
class StoredViewRecord:
    """Which stored view each row of a batch is (sample ids and view ids) and its record."""

    sample: Tensor
    view: Tensor
    records: StoreRecords


class StoreView(View):
    """Replays the views of a soft-label store (the store's own augmentation settings).

    Args:
        store: an open :class:`SoftLabelStore`.
        input_shape: one sample's shape (checked against the store's view kind).
        repeats: views per loaded sample in a batch (FKD's multi-crop loading).
    """

    name = "store"
    separate_teacher_input = False

    def __init__(self, store: SoftLabelStore, input_shape: tuple[int, ...],
                 repeats: int = 1) -> None:
        if repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {repeats}")
        self.store = store
        self.repeats = int(repeats)
        self.kind = store.layout.view_kind
        view_meta = store.meta.get("view") or {}
        self.augment = None
        if self.kind != "none":
            self.augment = make_augment(tuple(input_shape), **view_meta.get("augment", {}))

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        if batch.index is None:
            raise ConfigError(
                "training from a soft-label store needs the sample index of every batch "
                "(data sets of kdforge provide it as 'index')"
            )
        inputs, targets, index = batch.inputs, batch.targets, batch.index
        if self.repeats > 1:
            inputs = inputs.repeat_interleave(self.repeats, 0)
            index = index.repeat_interleave(self.repeats, 0)
            targets = None if targets is None else targets.repeat_interleave(self.repeats, 0)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        view_ids = torch.randint(self.store.views_per_sample, (index.shape[0],),
                                 generator=generator, device=gen_device)
        sample_cpu, view_cpu = index.cpu(), view_ids.cpu()
        records = self.store.read(sample_cpu, view_cpu).to(inputs.device)
        if self.augment is not None:
            seeds = None
            if getattr(self.augment, "noise_std", 0.0) > 0:  # signals with noise only
                seeds = self.store.view_seed(sample_cpu, view_cpu).to(inputs.device)
            inputs = self.augment.apply(inputs, records.augment_params(noise_seed=seeds))
        record = StoredViewRecord(index, view_ids.to(index.device), records)
        return Batch(inputs, targets, None, index, view=record)


class StoredTeacher(Teacher):
    """A teacher that reads soft labels from a store instead of running a network.

    Its ``Outputs.logits`` are the stored log-probabilities with the missing mass filled
    (``fill="smooth"``: FKD's marginal smoothing; ``"renorm"``: top-k renormalised), so
    ``softmax(logits / T)`` is the tempered stored distribution. It answers only for
    batches prepared by :class:`StoreView` (it needs to know which stored view each row is).
    """

    def __init__(self, store: SoftLabelStore, fill: str = "smooth") -> None:
        super().__init__()
        if fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.store = store
        self.fill = fill

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        record = getattr(batch, "view", None)
        if not isinstance(record, StoredViewRecord):
            raise ConfigError(
                "a stored teacher answers only for batches replayed from its store (the run's "
                "view must be the store's); evaluate fidelity with the real teacher instead"
            )
        return Outputs(self.store.log_probs(record.records, fill=self.fill).to(inputs.device))

    def extra_repr(self) -> str:
        return f"store={str(self.store.path)!r}, fill={self.fill!r}"


__all__ = ["StoreView", "StoredTeacher", "StoredViewRecord"]
