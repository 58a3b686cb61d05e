"""The soft-label store: the teacher's soft labels of many random views, stored once, replayed.

FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV
2022) runs the teacher once, ahead of training, on many random views (crops, flips, mixup
pairs) of every training sample and stores each view's parameters next to the teacher's
top-k soft label. Training then draws one stored view of a sample, *replays* its parameters
with :mod:`kdforge.data.augment` to build the student's input, and reads the soft label from
the store: the teacher never runs during training.

The store is a directory (``meta.json`` plus fixed-size binary shards, memory-mapped for
reading). One module per responsibility:

=================  ==========================================================================
``format``         the directory, the record layout (:class:`StoreLayout`), value formats
``quantize``       the grids of crops and mixup ratios (quantised before labelling)
``codec``          records to bytes and back
``records``        decoded records (:class:`StoreRecords`) and ids
``seeds``          per-view noise seeds and uniforms, the views of each epoch
``targets``        dense soft targets and log-probabilities from the stored top-k
``files``          atomic writes, JSON, checksums, shard arithmetic
``writer``         :class:`SoftLabelStoreWriter` (several processes, resumable)
``reader``         :class:`SoftLabelStore` (memory maps, verification)
``compat``         is this store made for this run: layout, meta, the samples' fingerprint
``mixed``          function-matching views (:class:`MixedViews`)
``replay``         :class:`StoreView` and the record a batch carries (:class:`StoredViewRecord`)
``source``         :class:`StoreSource`, the batch source that reads records in the loader
=================  ==========================================================================

Generating a store (running the teacher) is :mod:`kdforge.jobs.soft_labels`; a run learns
from one through :func:`kdforge.teachers.stored.open_store_run`.
"""

from kdforge.core.errors import StoreError
from kdforge.store.compat import check_run, check_samples, split_fingerprint
from kdforge.store.format import (
    FILL_MODES,
    FORMAT_VERSION,
    META_FILE,
    VALUE_FORMATS,
    VIEW_KINDS,
    StoreLayout,
)
from kdforge.store.mixed import MixedViews, view_meta
from kdforge.store.quantize import (
    quantize_crop,
    quantize_ratio,
    ratio_code_cdf,
    ratio_from_uniform,
)
from kdforge.store.reader import SoftLabelStore
from kdforge.store.records import StoreRecords, as_ids
from kdforge.store.replay import StoredViewRecord, StoreView
from kdforge.store.seeds import epoch_views, view_seed, view_uniforms
from kdforge.store.source import (
    EpochBatch,
    EpochBatchSampler,
    StoreSamples,
    StoreSource,
    keyed_loader,
)
from kdforge.store.targets import dense_arrays, dense_targets, log_probs, soft_targets
from kdforge.store.writer import SoftLabelStoreWriter

__all__ = [
    "FILL_MODES",
    "FORMAT_VERSION",
    "META_FILE",
    "VALUE_FORMATS",
    "VIEW_KINDS",
    "EpochBatch",
    "EpochBatchSampler",
    "MixedViews",
    "SoftLabelStore",
    "SoftLabelStoreWriter",
    "StoreError",
    "StoreLayout",
    "StoreRecords",
    "StoreSamples",
    "StoreSource",
    "StoreView",
    "StoredViewRecord",
    "as_ids",
    "check_run",
    "check_samples",
    "dense_arrays",
    "dense_targets",
    "epoch_views",
    "keyed_loader",
    "log_probs",
    "quantize_crop",
    "quantize_ratio",
    "ratio_code_cdf",
    "ratio_from_uniform",
    "soft_targets",
    "split_fingerprint",
    "view_meta",
    "view_seed",
    "view_uniforms",
]
