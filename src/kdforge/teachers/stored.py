"""Training from a soft-label store: the teacher is never run (FKD, Shen & Xing 2022).

``StoreView`` draws, for every sample of a batch, one of the views stored for it, replays that
view's augmentation exactly (the crop and flip recorded in the store, the noise seed derived
from the store seed), and hands the view's record to ``StoredTeacher``, which returns the
stored soft label as ``Outputs`` (log-probabilities as logits, so a KD temperature still
applies). With ``repeats=m`` each loaded sample yields ``m`` views in the batch, as FKD's
multi-crop loading: the data loading cost per view falls by ``m``.

Replay is split as FKD splits it: reading and decoding the records, computing the soft
labels and loading mixing partners is CPU work that :meth:`StoreView.load` does, in the
DataLoader's workers when the trainer has some (:class:`StoreSamples`); the training step
only applies the crops (and the mix) on the device. Which view a sample replays in an epoch
is :func:`epoch_views`, a pure function of (run seed, epoch), so it does not depend on the
number of workers, the process split or a resume.

Function matching (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022) can run from a store too: each stored view is a consistent crop
mixed, by mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) or
CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019), with a view of a partner sample, and the stored label is
the teacher's label *of the mixed input*, not a mix of labels. :class:`MixedViews` defines
those views once, for the generator and for the replay; the replay loads each partner
sample from the training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdforge.core.errors import ConfigError, StoreError
from kdforge.core.outputs import Batch, Outputs
from kdforge.data.augment import (
    AugmentParams,
    ImageAugment,
    MixParams,
    Mixup,
    SignalAugment,
    make_augment,
)
from kdforge.data.loaders import EpochBatch, load_batch
from kdforge.data.views import View
from kdforge.teachers.base import Teacher
from kdforge.teachers.store import (
    FILL_MODES,
    SoftLabelStore,
    StoreRecords,
    _hash32_int,
    as_ids,
    dense_arrays,
    quantize_crop,
    ratio_code_cdf,
    ratio_from_uniform,
    view_seed,
    view_uniforms,
)


@dataclass
class StoredViewRecord:
    """Which stored view each row of a batch is (sample ids and view ids) and its record.

    ``mix`` (function-matching stores): the mix that was replayed, with ``partner`` holding
    the partners' *sample ids* and ``ratio`` the own input's share (for CutMix the exact
    kept-area fraction of the pixel-snapped box).
    """

    sample: Tensor
    view: Tensor
    records: StoreRecords
    mix: MixParams | None = None
    #: ``(B, K)`` teacher log-probabilities and probabilities at T = 1, the missing mass
    #: filled by ``fill``, when the loader computed them (:attr:`StoreView.fill`).
    log_probs: Tensor | None = None
    probs: Tensor | None = None
    fill: str | None = None


def _epoch_key(seed: int, epoch: int) -> int:
    """A 64-bit generator seed for the view draws of one epoch of a run."""
    seed &= 0xFFFFFFFFFFFFFFFF
    k0 = _hash32_int((seed & 0xFFFFFFFF) ^ _hash32_int((seed >> 32) ^ 0x85EBCA6B))
    k1 = _hash32_int(k0 ^ _hash32_int((int(epoch) & 0xFFFFFFFF) ^ 0xC2B2AE35))
    return (k0 << 32) | k1


def epoch_views(seed: int, epoch: int, num_samples: int, repeats: int,
                views_per_sample: int) -> Tensor:
    """``(num_samples, repeats)`` int32: the stored views each sample replays in ``epoch``.

    Row ``i`` holds the views of sample ``i`` (its ``repeats`` views of one batch, FKD's
    multi-crop loading), drawn uniformly from ``[0, views_per_sample)`` by one generator
    seeded from ``(seed, epoch)``. The table is a pure function of the run's seed and the
    epoch, so every DataLoader worker, every rank and a resumed run replay the same views,
    and looking a batch up is a single indexing op. (4 bytes per sample and repeat: 5 MB
    for ImageNet's 1.28M images.)
    """
    generator = torch.Generator().manual_seed(_epoch_key(int(seed), int(epoch)))
    return torch.randint(int(views_per_sample), (int(num_samples), int(repeats)),
                         generator=generator, dtype=torch.int32)


@dataclass
class StoreLoad:
    """What replaying a batch of stored views reads on the CPU (:meth:`StoreView.load`).

    Everything but applying the crops and the mix: done by the DataLoader's workers when
    the trainer has some (:class:`StoreSamples`), so it overlaps the training step. Rows are
    views: ``B * m`` for ``B`` loaded samples and ``m`` repeats, in the order of
    ``index.repeat_interleave(m)``.

    Attributes:
        view: ``(B m,)`` int64 view ids.
        records: the decoded records of those views.
        noise_seed: ``(B m,)`` int64 noise seeds (signals with noise), or ``None``.
        log_probs, probs: ``(B m, K)`` teacher log-probabilities and probabilities at
            T = 1 filled by ``fill`` (:func:`~kdforge.teachers.store.dense_targets`), or
            ``None`` (the teacher computes them).
        fill: the fill of ``log_probs``.
        partner_inputs, partner_targets: function-matching stores: the partners' inputs
            and labels (row ``b`` is sample ``records.partner[b]``).
        partner_params: the partners' stored crops and flips of the same view ids.
    """

    view: Tensor
    records: StoreRecords
    noise_seed: Tensor | None = None
    log_probs: Tensor | None = None
    probs: Tensor | None = None
    fill: str | None = None
    partner_inputs: Tensor | None = None
    partner_targets: Tensor | None = None
    partner_params: AugmentParams | None = None

    def pin_memory(self) -> StoreLoad:
        """A copy in pinned memory (the DataLoader calls it with ``pin_memory=True``)."""

        def pin(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.pin_memory()
            if isinstance(value, StoreRecords):
                return StoreRecords(**{f.name: pin(getattr(value, f.name))
                                       for f in fields(value)})
            if isinstance(value, AugmentParams):
                return value._replace(lambda t: t.pin_memory())
            return value

        return StoreLoad(**{f.name: pin(getattr(self, f.name)) for f in fields(self)})


class MixedViews:
    """The function-matching views of a store: a consistent crop mixed with a partner's view.

    View ``v`` of sample ``i`` is a pure function of ``(store seed, i, v)``: with ``m =
    augment.num_uniforms`` and ``u = view_uniforms(seed, i, v, m + 4)``,

    * ``u[:m]`` is the sample's own crop and flip (``augment.from_uniforms``, then
      :func:`~kdforge.teachers.store.quantize_crop`), the record's stored ``crop``/``flags``;
    * ``u[m]`` is the partner ``j = (i + 1 + floor(u[m] (N - 1))) mod N``: uniform over the
      *whole* training set except ``i`` (stored as ``partner``);
    * ``u[m + 1]`` is the ratio (the own input's share): the folded ``Beta(alpha, alpha)``
      ratio of :class:`~kdforge.data.augment.Mixup`, drawn on the store's grid by inversion
      (:func:`~kdforge.teachers.store.ratio_from_uniform`; stored as ``ratio``);
    * ``u[m + 2 : m + 4]`` place the CutMix box (:meth:`Mixup.boxes`), whose size follows
      from the stored ratio: the box is derived at replay, never stored.

    The partner is seen in *its own* view ``v``: the crop and flip that record ``(j, v)``
    stores (the same function of ``(seed, j, v)``, so shard A can be labelled before shard
    B that holds ``j`` is) and, for signals with noise, the noise seed ``view_seed(seed, j,
    v)``. The teacher labels ``mix(own view, partner view)``; :meth:`render` is that
    computation, used by the generator and by :class:`StoreView`, which is why the replayed
    input is bit-identical to the labelled one.

    Args:
        augment: the crop augmentation (the store's ``meta["view"]["augment"]``).
        mixup: mixup or CutMix (``meta["view"]["mix"]``).
        store_seed: the store seed.
        num_samples: ``N``, the training set's size (at least 2).
    """

    def __init__(self, augment: ImageAugment | SignalAugment, mixup: Mixup, store_seed: int,
                 num_samples: int) -> None:
        if num_samples < 2:
            raise ConfigError(
                f"function matching mixes each sample with another one; the training set has "
                f"{num_samples} sample(s): use at least 2"
            )
        self.augment = augment
        self.mixup = mixup
        self.store_seed = int(store_seed)
        self.num_samples = int(num_samples)
        self._code_cdf = ratio_code_cdf(mixup.folded_cdf)

    @classmethod
    def from_store(cls, store: SoftLabelStore, input_shape: Sequence[int]) -> MixedViews:
        """The mixed views of a ``has_mix`` store, from its meta (``view`` and ``store_seed``)."""
        view = store.meta.get("view") or {}
        if not isinstance(view, dict) or not isinstance(view.get("mix"), dict):
            raise StoreError(
                f"the store {store.path} holds mixed views (has_mix) but its meta.json records "
                "no 'view.mix' settings (alpha, mode); regenerate it with kdforge soft-labels"
            )
        if "store_seed" not in store.meta:
            raise StoreError(f"the store {store.path} records no 'store_seed'; regenerate it")
        augment = make_augment(tuple(input_shape), **(view.get("augment") or {}))
        return cls(augment, Mixup(**view["mix"]), int(store.meta["store_seed"]),
                   store.num_samples)

    def _uniforms(self, sample: Tensor, view: Tensor) -> Tensor:
        return view_uniforms(self.store_seed, sample, view, self.augment.num_uniforms + 4)

    def _crops(self, u: Tensor) -> AugmentParams:
        params = self.augment.from_uniforms(u[:, : self.augment.num_uniforms].T.contiguous())
        params.crop = quantize_crop(params.crop)
        return params

    def crops(self, sample: Tensor, view: Tensor) -> AugmentParams:
        """The quantised crops and flips of views ``(sample, view)`` (CPU), as stored."""
        return self._crops(self._uniforms(sample, view))

    def draw(self, sample: Tensor, view: Tensor) -> tuple[AugmentParams, Tensor, Tensor]:
        """Own crops and flips, partner sample ids and ratios of views ``(sample, view)``."""
        sample = torch.as_tensor(sample).to("cpu", torch.int64)
        view = torch.as_tensor(view).to("cpu", torch.int64)
        u = self._uniforms(sample, view)
        m = self.augment.num_uniforms
        own = self._crops(u)
        step = torch.floor(u[:, m] * (self.num_samples - 1)).to(torch.int64)
        partner = (sample + 1 + step) % self.num_samples
        ratio = ratio_from_uniform(u[:, m + 1], self._code_cdf)
        return own, partner, ratio

    def mix_params(self, sample: Tensor, view: Tensor, partner: Tensor, ratio: Tensor,
                   size: Sequence[int]) -> MixParams:
        """The mix of views ``(sample, view)`` for inputs of spatial ``size`` (CPU).

        Mixup: the stored ratio. CutMix: the box of area ``1 - ratio`` snapped to ``size``
        and placed by the view's uniforms, with the exact kept-area fraction as ratio.
        """
        partner = torch.as_tensor(partner).to("cpu", torch.int64)
        ratio = torch.as_tensor(ratio).to("cpu", torch.float32)
        if self.mixup.mode != "cutmix":
            return MixParams(partner=partner, ratio=ratio)
        u = self._uniforms(torch.as_tensor(sample).cpu(), torch.as_tensor(view).cpu())
        m = self.augment.num_uniforms
        kept, box = Mixup.boxes(ratio, u[:, m + 2 : m + 4].T.contiguous(), tuple(size))
        return MixParams(partner=partner, ratio=kept.to(torch.float32), box=box)

    def _with_noise(self, params: AugmentParams, sample: Tensor, view: Tensor) -> AugmentParams:
        seed = None
        if getattr(self.augment, "noise_std", 0.0) > 0:
            seed = view_seed(self.store_seed, sample.cpu(), view.cpu())
        return AugmentParams(crop=params.crop, flip=params.flip, noise_seed=seed)

    def render(self, x: Tensor, x_partner: Tensor, sample: Tensor, view: Tensor,
               own: AugmentParams, partner: Tensor, partner_view: AugmentParams,
               ratio: Tensor) -> tuple[Tensor, MixParams]:
        """The mixed inputs of views ``(sample, view)``, and their mix.

        ``x``: the samples' inputs; ``x_partner``: the partners' inputs (row ``b`` is sample
        ``partner[b]``), both on the device the result lives on; ``own`` and
        ``partner_view``: the stored crops and flips of records ``(sample, view)`` and
        ``(partner, view)``; ``ratio``: the stored ratios. Row ``b`` depends only on row ``b``
        of every argument.
        """
        sample, view = sample.cpu(), view.cpu()
        own_x = self.augment.apply(x, self._with_noise(own, sample, view).to(x.device))
        partner_x = self.augment.apply(
            x_partner.to(device=x.device, dtype=x.dtype),
            self._with_noise(partner_view, partner.cpu(), view).to(x.device),
        )
        mix = self.mix_params(sample, view, partner, ratio, tuple(x.shape[2:]))
        return self.mixup.apply_pair(own_x, partner_x, mix.to(x.device)), mix


def view_meta(name: str, augment: ImageAugment | SignalAugment | None,
              mixup: Mixup | None = None, labels: bool = False) -> dict[str, Any]:
    """What a store records as its view (``meta["view"]``), JSON-ready.

    ``{"name", "augment"}`` (the augmentation's options, ``None`` for ``fixed``), plus
    ``"mix"`` (mixup options) and ``"labels"`` for function matching.
    """
    out: dict[str, Any] = {"name": name,
                           "augment": augment.config() if augment is not None else None}
    if mixup is not None:
        out["mix"] = mixup.config()
        out["labels"] = bool(labels)
    return out


class StoreView(View):
    """Replays the views of a soft-label store (the store's own augmentation settings).

    For a function-matching store (``layout.has_mix``) every view is also mixed with its
    stored partner's view (:class:`MixedViews`): the partner's input is loaded from
    ``dataset`` and its crop read from the store, so the replayed input equals, bit for
    bit, the mixed input the teacher labelled. Targets then follow the store's
    function-matching ``labels`` option: ``None`` (no label term, as Beyer et al. 2022), or
    mixed one-hot targets ``(B, K)``.

    The work is split in two. :meth:`load` reads, on the CPU, everything a batch needs
    (records, noise seeds, the soft labels when ``fill`` is given, mixing partners);
    calling the view applies the crops and the mix on the batch's device. The trainer runs
    :meth:`load` in its DataLoader (:meth:`loader_dataset`), in the workers when it has
    some, with views drawn by :func:`epoch_views`. Called on a plain batch (your own loop),
    the view loads in place and draws the view ids from ``generator``.

    Args:
        store: an open :class:`SoftLabelStore`.
        input_shape: one sample's shape (checked against the store's view kind).
        repeats: views per loaded sample in a batch (FKD's multi-crop loading).
        dataset: the training set the store was made from (sample ``i`` of the store is
            ``dataset[i]``); required for function-matching stores, ignored otherwise.
        fill: the :class:`StoredTeacher`'s fill; given, :meth:`load` also computes the
            dense soft labels (``StoredViewRecord.log_probs``), so the loader does that
            work too. ``None``: the teacher computes them.
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
            self.mixed = MixedViews.from_store(store, input_shape)
            self.augment = self.mixed.augment
            self.labels = bool(stored_view.get("labels", False))

    # -- the CPU part ------------------------------------------------------------------------
    def load(self, index: Tensor, view: Tensor, checked: bool = False) -> StoreLoad:
        """Read what replaying views ``view`` of samples ``index.repeat_interleave(repeats)``
        needs (CPU; see :class:`StoreLoad`). ``index``: ``(B,)``; ``view``: ``(B m,)``;
        ``checked``: the ids are known to be in range (see :meth:`SoftLabelStore.read`)."""
        sample, view_np = as_ids(index), as_ids(view)
        if self.repeats > 1:
            sample = np.repeat(sample, self.repeats)
        records = self.store.read(sample, view_np, checked=checked)
        view = torch.from_numpy(view_np)
        log_probs = probs = None
        if self.fill is not None:
            log_q, q = dense_arrays(records.logp.numpy(), records.indices.numpy(),
                                    self.store.num_classes, self.fill)
            log_probs, probs = torch.from_numpy(log_q), torch.from_numpy(q)
        if self.mixed is not None:
            partner = records.partner
            assert partner is not None
            loaded = load_batch(self.dataset, partner.tolist())
            return StoreLoad(view, records, None, log_probs, probs, self.fill, loaded.inputs,
                             loaded.targets,
                             self.store.read(partner, view, checked=True).augment_params())
        seeds = None
        if getattr(self.augment, "noise_std", 0.0) > 0:  # signals with noise only
            seeds = self.store.view_seed(torch.from_numpy(sample), view)
        return StoreLoad(view, records, seeds, log_probs, probs, self.fill)

    def loader_dataset(self, dataset: Any, seed: int) -> StoreSamples:
        """The training set as the trainer's loader should read it: :class:`StoreSamples`
        (one :class:`~kdforge.data.loaders.EpochBatch` key per batch), which runs
        :meth:`load` next to the data loading."""
        return StoreSamples(self, dataset, seed)

    # -- the device part ---------------------------------------------------------------------
    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        if batch.index is None:
            raise ConfigError(
                "training from a soft-label store needs the sample index of every batch "
                "(data sets of kdforge provide it as 'index')"
            )
        load = batch.view
        if not isinstance(load, StoreLoad):  # a plain batch: read in place
            gen_device = generator.device if generator is not None else torch.device("cpu")
            view_ids = torch.randint(self.store.views_per_sample,
                                     (batch.index.shape[0] * self.repeats,),
                                     generator=generator, device=gen_device)
            load = self.load(batch.index, view_ids)
        inputs, targets, index = batch.inputs, batch.targets, batch.index
        if self.repeats > 1:
            inputs = inputs.repeat_interleave(self.repeats, 0)
            index = index.repeat_interleave(self.repeats, 0)
            targets = None if targets is None else targets.repeat_interleave(self.repeats, 0)
        device = inputs.device
        targets_kw: dict[str, Any] = {"fill": load.fill}
        for name in ("log_probs", "probs"):
            value = getattr(load, name)
            targets_kw[name] = None if value is None else value.to(device, non_blocking=True)
        if self.mixed is not None:
            return self._replay_mixed(inputs, targets, index, load, targets_kw)
        records = load.records.to(device)
        if self.augment is not None:
            seeds = None if load.noise_seed is None else load.noise_seed.to(device)
            inputs = self.augment.apply(inputs, records.augment_params(noise_seed=seeds))
        record = StoredViewRecord(index, load.view.to(device), records, **targets_kw)
        return Batch(inputs, targets, None, index, view=record)

    def _replay_mixed(self, inputs: Tensor, targets: Tensor | None, index: Tensor,
                      load: StoreLoad, targets_kw: dict[str, Any]) -> Batch:
        """Function matching: own view + the stored partner's view, mixed as labelled."""
        assert self.mixed is not None and load.partner_inputs is not None
        assert load.partner_params is not None
        records = load.records
        assert records.partner is not None and records.ratio is not None
        sample = index.cpu()
        mixed, mix = self.mixed.render(inputs, load.partner_inputs.to(inputs.device), sample,
                                       load.view, records.augment_params(), records.partner,
                                       load.partner_params, records.ratio)
        mixed_targets = None
        if self.labels and targets is not None:
            assert load.partner_targets is not None
            mixed_targets = self.mixed.mixup.mix_targets(
                targets, mix.to(targets.device), self.store.num_classes,
                partner_targets=load.partner_targets.to(targets.device))
        record = StoredViewRecord(index, load.view.to(inputs.device), records.to(inputs.device),
                                  mix.to(inputs.device), **targets_kw)
        return Batch(mixed, mixed_targets, None, index, view=record)


class StoreSamples(Dataset):
    """A training set read for a store replay: samples plus their views' :class:`StoreLoad`.

    The trainer's loader asks it for batches by :class:`~kdforge.data.loaders.EpochBatch`
    keys (epoch and sample indices); a batch is the data set's own batch
    (``input``, ``target``, ``index``) plus ``view``: :meth:`StoreView.load` of the views
    :func:`epoch_views` draws for (``seed``, epoch). Run in DataLoader
    workers, all of the store's CPU work overlaps the training step, as in FKD.

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
                f"indices); got {type(key).__name__} (use kdforge.data.loaders.train_loader("
                "..., keyed=True))"
            )
        batch = load_batch(self.dataset, key.indices)
        index = batch.index if batch.index is not None else torch.as_tensor(key.indices)
        view_ids = self.views(key.epoch)[as_ids(index)].reshape(-1)
        return {"input": batch.inputs, "target": batch.targets, "index": index,
                "view": self.view.load(index, view_ids, checked=True)}

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """The batch of the one sample ``key = (epoch, index)``."""
        return self.__getitems__(EpochBatch(int(key[0]), [int(key[1])]))


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
        if record.log_probs is not None and record.fill == self.fill:  # read by the loader
            log_probs, probs = record.log_probs, record.probs
        else:
            log_probs, probs = self.store.dense_targets(record.records, fill=self.fill)
        device = inputs.device
        return Outputs(log_probs.to(device), probs=None if probs is None else probs.to(device))

    def extra_repr(self) -> str:
        return f"store={str(self.store.path)!r}, fill={self.fill!r}"


__all__ = ["MixedViews", "StoreLoad", "StoreSamples", "StoreView", "StoredTeacher",
           "StoredViewRecord", "epoch_views", "view_meta"]
