"""A teacher read from a soft-label store (FKD, Shen & Xing, "A Fast Knowledge Distillation
Framework for Visual Recognition", ECCV 2022), and the one place a run opens a store.

:class:`StoredTeacher` answers with the stored soft labels of the views that
:class:`kdforge.store.StoreView` replayed; :func:`open_store_run` pairs it with that replay
(a batch source) and with the network that made the store, after every compatibility check.
The store itself is :mod:`kdforge.store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from kdforge.config import StoreTeacherConfig
from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.models.runs import WEIGHTS, load_run_model
from kdforge.store import (
    FILL_MODES,
    SoftLabelStore,
    StoredViewRecord,
    StoreSource,
    StoreView,
    check_run,
)
from kdforge.teachers.base import Teacher
from kdforge.teachers.module import ModuleTeacher


class StoredTeacher(Teacher):
    """A teacher that reads soft labels from a store instead of running a network.

    Its ``Outputs.logits`` are the stored log-probabilities with the missing mass filled
    (``fill="smooth"``: FKD's marginal smoothing; ``"renorm"``: top-k renormalised), so
    ``softmax(logits / T)`` is the tempered stored distribution. It answers only for
    batches prepared by :class:`~kdforge.store.StoreView` (it needs to know which stored
    view each row is), so it cannot label held-out data (``labels_any_input = False``).
    """

    labels_any_input: ClassVar[bool] = False

    def __init__(self, store: SoftLabelStore, fill: str = "smooth") -> None:
        super().__init__()
        if fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.store = store
        self.fill = fill

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        record = getattr(batch, "view", None)
        if not isinstance(record, StoredViewRecord) or not record.replayed:
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


@dataclass
class StoreRun:
    """What a run that learns from a store trains with (see :func:`open_store_run`).

    Attributes:
        source: the batch source: the training set with the store's replay as its view,
            records read in the loader.
        teacher: the :class:`StoredTeacher`.
        eval_teacher: the network that made the store, for fidelity metrics on held-out
            data, when the store records one teacher run whose weights exist; else ``None``.
        store: the open store.
    """

    source: StoreSource
    teacher: StoredTeacher
    eval_teacher: nn.Module | None
    store: SoftLabelStore


def open_store_run(cfg: StoreTeacherConfig, train_dataset: Any, *,
                   input_shape: tuple[int, ...], num_classes: int, data_cfg: Any,
                   batch_size: int, num_workers: int = 0) -> StoreRun:
    """Open the store of ``cfg`` for a run on ``train_dataset``, checked before training.

    Refuses (:class:`~kdforge.core.errors.StoreError`) a store whose length, class count,
    data set, input shape or training samples (:func:`kdforge.store.check_run`: the
    fingerprint of the split's inputs and labels) differ from the run's, and, with
    ``cfg.verify``, one whose shards fail their checksums.

    Args:
        cfg: the run's ``teacher: {store: DIR, fill, repeats, verify}`` section.
        train_dataset: the run's training split (sample ``i`` of the store is its sample ``i``).
        input_shape, num_classes: of the run's data.
        data_cfg: the run's data section (``name``, ``options``, ``val_fraction``), to name
            what differs when the samples do.
        batch_size: the global batch size in loaded samples; num_workers: loader workers.
    """
    store = SoftLabelStore(cfg.path)
    check_run(store, train_dataset, num_classes=num_classes, input_shape=input_shape,
              data=data_cfg)
    if cfg.verify:
        store.verify()
    teacher = StoredTeacher(store, fill=cfg.fill)
    view = StoreView(store, tuple(input_shape), repeats=cfg.repeats, dataset=train_dataset,
                     fill=cfg.fill)
    source = StoreSource(train_dataset, batch_size, view=view, num_workers=num_workers)
    return StoreRun(source, teacher, store_teacher_network(store), store)


def store_teacher_network(store: SoftLabelStore) -> nn.Module | None:
    """The teacher that made ``store`` (a frozen :class:`ModuleTeacher`), when the store
    records exactly one teacher run and its weights are still there; else ``None``."""
    runs = [t.get("run") for t in store.meta.get("teacher", []) if isinstance(t, dict)]
    if len(runs) != 1 or not runs[0] or not (Path(runs[0]) / WEIGHTS).is_file():
        return None
    return ModuleTeacher(load_run_model(runs[0]))


__all__ = ["StoreRun", "StoredTeacher", "open_store_run", "store_teacher_network"]
