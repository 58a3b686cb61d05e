"""Replaying a store's views: the student's input rebuilt exactly, the label read, never the
teacher run (FKD, Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022).

:class:`StoreView` draws, for every sample of a batch, one of the views stored for it,
replays that view's augmentation exactly (the crop and flip recorded in the store, the noise
seed derived from the store seed) and hands the view's record on in ``Batch.view`` as one
:class:`StoredViewRecord`, from which :class:`kdforge.teachers.StoredTeacher` answers. With
``repeats=m`` each loaded sample yields ``m`` views in the batch, as FKD's multi-crop
loading: the data loading cost per view falls by ``m``.

Replay is split as FKD splits it: reading and decoding the records, computing the soft
labels and loading mixing partners is CPU work that :meth:`StoreView.load` does, in the
DataLoader's workers when the run has some (:class:`kdforge.store.StoreSource`); the
training step only applies the crops (and the mix) on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, StoreError
from kdforge.core.outputs import Batch
from kdforge.data.augment import AugmentParams, MixParams, make_augment
from kdforge.data.loaders import load_batch
from kdforge.data.views import View
from kdforge.store.format import FILL_MODES
from kdforge.store.mixed import MixedViews
from kdforge.store.reader import SoftLabelStore
from kdforge.store.records import StoreRecords, as_ids
from kdforge.store.targets import dense_arrays


@dataclass
class StoredViewRecord:
    """Which stored views the rows of a batch are, and what was read for them.

    The one record between the loader and the step (``Batch.view`` of a store replay).
    Rows are views: ``B * m`` for ``B`` loaded samples and ``m`` repeats, in the order of
    ``index.repeat_interleave(m)``. :meth:`StoreView.load` fills it on the CPU (in the
    DataLoader's workers); calling the view applies it on the device and hands on a copy
    with ``replayed=True``, the ids, records and soft labels on the device, the replayed
    ``mix`` and no partner inputs.

    Attributes:
        sample: ``(B m,)`` int64 sample ids.
        view: ``(B m,)`` int64 view ids.
        records: the decoded records of those views.
        noise_seed: ``(B m,)`` int64 noise seeds (signals with noise), or ``None``.
        log_probs, probs: ``(B m, K)`` teacher log-probabilities and probabilities at
            T = 1, the missing mass filled by ``fill`` (:func:`kdforge.store.dense_targets`),
            when the loader computed them; ``None``: the teacher computes them.
        fill: the fill of ``log_probs``.
        partner_inputs, partner_targets: function-matching stores, before replay: the
            partners' inputs and labels (row ``b`` is sample ``records.partner[b]``).
        partner_params: the partners' stored crops and flips of the same view ids.
        mix: function-matching stores, after replay: the mix that was applied, with
            ``partner`` holding the partners' *sample ids* and ``ratio`` the own input's
            share (for CutMix the exact kept-area fraction of the pixel-snapped box).
        replayed: whether the view has been applied to the batch's inputs.
    """

    sample: Tensor
    view: Tensor
    records: StoreRecords
    noise_seed: Tensor | None = None
    log_probs: Tensor | None = None
    probs: Tensor | None = None
    fill: str | None = None
    partner_inputs: Tensor | None = None
    partner_targets: Tensor | None = None
    partner_params: AugmentParams | None = None
    mix: MixParams | None = None
    replayed: bool = False

    def pin_memory(self) -> StoredViewRecord:
        """A copy in pinned memory (the DataLoader calls it with ``pin_memory=True``)."""

        def pin(value: Any) -> Any:
            if isinstance(value, (Tensor, StoreRecords)):
                return value.pin_memory()
            if isinstance(value, (AugmentParams, MixParams)):
                return value._replace(lambda t: t.pin_memory())
            return value

        return StoredViewRecord(**{f.name: pin(getattr(self, f.name)) for f in fields(self)})


class StoreView(View):
    """Replays the views of a soft-label store (the store's own augmentation settings).

    For a function-matching store (``layout.has_mix``) every view is also mixed with its
    stored partner's view (:class:`~kdforge.store.MixedViews`): the partner's input is
    loaded from ``dataset`` and its crop read from the store, so the replayed input equals,
    bit for bit, the mixed input the teacher labelled. Targets then follow the store's
    function-matching ``labels`` option: ``None`` (no label term, as Beyer et al. 2022), or
    mixed one-hot targets ``(B, K)``.

    The work is split in two. :meth:`load` reads, on the CPU, everything a batch needs
    (records, noise seeds, the soft labels when ``fill`` is given, mixing partners);
    calling the view applies the crops and the mix on the batch's device. A run reads
    through :class:`~kdforge.store.StoreSource`, which runs :meth:`load` in its DataLoader
    (in the workers when it has some) with views drawn by :func:`~kdforge.store.epoch_views`.
    Called on a plain batch (your own loop), the view loads in place and draws the view ids
    from ``generator``.

    Args:
        store: an open :class:`~kdforge.store.SoftLabelStore`.
        input_shape: one sample's shape (checked against the store's view kind).
        repeats: views per loaded sample in a batch (FKD's multi-crop loading).
        dataset: the training set the store was made from (sample ``i`` of the store is
            ``dataset[i]``); required for function-matching stores, ignored otherwise.
        fill: the stored teacher's fill; given, :meth:`load` also computes the dense soft
            labels (``StoredViewRecord.log_probs``), so the loader does that work too.
            ``None``: the teacher computes them.
    """

    name = "store"
    separate_teacher_input = False

    def __init__(self, store: SoftLabelStore, input_shape: tuple[int, ...],
                 repeats: int = 1, dataset: Any = None, fill: str | None = None) -> None:
        if repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {repeats}")
        if fill is not None and fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.store = store
        self.repeats = int(repeats)
        self.fill = fill
        self.kind = store.layout.view_kind
        stored_view = store.meta.get("view") or {}
        self.augment = None
        if self.kind != "none":
            self.augment = make_augment(tuple(input_shape), **(stored_view.get("augment") or {}))
        self.mixed: MixedViews | None = None
        self.dataset = dataset
        self.labels = False
        if store.layout.has_mix:
            self._check_partner_set(dataset)
            self.mixed = MixedViews.from_store(store, input_shape)
            self.augment = self.mixed.augment
            self.labels = bool(stored_view.get("labels", False))

    def _check_partner_set(self, dataset: Any) -> None:
        store = self.store
        if dataset is None:
            raise ConfigError(
                f"the store {store.path} holds function-matching views (each view mixed "
                "with a partner sample); replaying them loads the partners' inputs, so "
                "StoreView needs the training set: StoreView(store, input_shape, "
                "dataset=train_set)"
            )
        if len(dataset) != store.num_samples:
            raise StoreError(
                f"the data set given to replay {store.path} has {len(dataset)} samples but "
                f"the store was made for {store.num_samples}; pass the training set the "
                "store was made from (the same data section and val_fraction)"
            )

    # -- the CPU part ------------------------------------------------------------------------
    def load(self, index: Tensor, view: Tensor, checked: bool = False) -> StoredViewRecord:
        """Read what replaying views ``view`` of samples ``index.repeat_interleave(repeats)``
        needs (CPU; see :class:`StoredViewRecord`). ``index``: ``(B,)``; ``view``: ``(B m,)``;
        ``checked``: the ids are known to be in range (see :meth:`SoftLabelStore.read`)."""
        sample, view_np = as_ids(index), as_ids(view)
        if self.repeats > 1:
            sample = np.repeat(sample, self.repeats)
        records = self.store.read(sample, view_np, checked=checked)
        out = StoredViewRecord(torch.from_numpy(sample), torch.from_numpy(view_np), records,
                               fill=self.fill)
        if self.fill is not None:
            log_q, q = dense_arrays(records.logp.numpy(), records.indices.numpy(),
                                    self.store.num_classes, self.fill)
            out.log_probs, out.probs = torch.from_numpy(log_q), torch.from_numpy(q)
        if self.mixed is not None:
            partner = records.partner
            assert partner is not None
            loaded = load_batch(self.dataset, partner.tolist())
            out.partner_inputs, out.partner_targets = loaded.inputs, loaded.targets
            out.partner_params = self.store.read(partner, out.view, checked=True).augment_params()
        elif getattr(self.augment, "noise_std", 0.0) > 0:  # signals with noise only
            out.noise_seed = self.store.view_seed(out.sample, out.view)
        return out

    # -- the device part ---------------------------------------------------------------------
    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        if batch.index is None:
            raise ConfigError(
                "training from a soft-label store needs the sample index of every batch "
                "(data sets of kdforge provide it as 'index')"
            )
        record = batch.view
        if not isinstance(record, StoredViewRecord):  # a plain batch: read in place
            gen_device = generator.device if generator is not None else torch.device("cpu")
            view_ids = torch.randint(self.store.views_per_sample,
                                     (batch.index.shape[0] * self.repeats,),
                                     generator=generator, device=gen_device)
            record = self.load(batch.index, view_ids)
        elif record.replayed:
            raise ConfigError("this batch's stored views were replayed already; replay a "
                              "batch from the loader once")
        inputs, targets, index = batch.inputs, batch.targets, batch.index
        if self.repeats > 1:
            inputs = inputs.repeat_interleave(self.repeats, 0)
            index = index.repeat_interleave(self.repeats, 0)
            targets = None if targets is None else targets.repeat_interleave(self.repeats, 0)
        device = inputs.device
        soft = {name: None if (value := getattr(record, name)) is None
                else value.to(device, non_blocking=True) for name in ("log_probs", "probs")}
        if self.mixed is not None:
            return self._replay_mixed(inputs, targets, index, record, soft)
        records = record.records.to(device)
        seeds = None if record.noise_seed is None else record.noise_seed.to(device)
        if self.augment is not None:
            inputs = self.augment.apply(inputs, records.augment_params(noise_seed=seeds))
        out = StoredViewRecord(index, record.view.to(device), records, seeds, fill=record.fill,
                               replayed=True, **soft)
        return Batch(inputs, targets, None, index, view=out)

    def _replay_mixed(self, inputs: Tensor, targets: Tensor | None, index: Tensor,
                      record: StoredViewRecord, soft: dict[str, Tensor | None]) -> Batch:
        """Function matching: own view + the stored partner's view, mixed as labelled."""
        assert self.mixed is not None and record.partner_inputs is not None
        assert record.partner_params is not None
        records = record.records
        assert records.partner is not None and records.ratio is not None
        sample = index.cpu()
        mixed, mix = self.mixed.render(inputs, record.partner_inputs.to(inputs.device), sample,
                                       record.view, records.augment_params(), records.partner,
                                       record.partner_params, records.ratio)
        mixed_targets = None
        if self.labels and targets is not None:
            assert record.partner_targets is not None
            mixed_targets = self.mixed.mixup.mix_targets(
                targets, mix.to(targets.device), self.store.num_classes,
                partner_targets=record.partner_targets.to(targets.device))
        device = inputs.device
        out = StoredViewRecord(index, record.view.to(device), records.to(device),
                               fill=record.fill, mix=mix.to(device), replayed=True, **soft)
        return Batch(mixed, mixed_targets, None, index, view=out)


__all__ = ["StoreView", "StoredViewRecord"]
