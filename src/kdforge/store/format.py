"""The store's format: the directory, the record layout and the value formats.

The store is a directory::

    meta.json            format version, layout, per-shard {file, sha256, samples, bytes},
                         the user's meta (teacher, data set, view policy, store seed)
    shard-00000.bin      fixed-size records of samples [0, S), every view of each sample,
    shard-00000.json     ordered (sample, view); the sidecar holds the shard's checksum
    shard-00001.bin      samples [S, 2S), ...
    ...

Record layout (one record per view; a packed little-endian numpy structured dtype, no
padding, see :meth:`StoreLayout.record_dtype`)::

    field     type              count          meaning
    --------  ----------------  -------------  ---------------------------------------------
    indices   uint16 | uint32   k              top-k class indices (uint16 if K <= 65535,
                                               else uint32: always exact, never floats)
    values    float16 | uint8   k              log-probabilities at T = 1 (see below)
    crop      uint8             4 | 2 | 0      crop fractions * 255 (image: top, left, height,
                                               width; signal: start, length; none: absent)
    flags     uint8             1 | 0          bit 0: flip (absent when view_kind == "none")
    partner   uint32            1 | 0          mixup partner *sample id* (has_mix only)
    ratio     uint8             1 | 0          mixup own-image ratio in [0.5, 1] (has_mix only)

Bytes per view with k = 5 and K <= 65535 (uint32 indices add 2 bytes per class: +10):

    ==========  =============  ======  ======
    view_kind   has_mix        uint8   fp16
    ==========  =============  ======  ======
    image       no             20      25
    image       yes            25      30
    signal      no             18      23
    signal      yes            23      28
    none        no             15      20
    ==========  =============  ======  ======

For comparison, keeping the same information unquantised (four float32 crop coordinates, a
flip byte, five int16 indices and five float16 probabilities) takes 16 + 1 + 10 + 10 = 37
bytes a view, about twice the 20 bytes of the uint8 format.

Values are the teacher's *log-probabilities at temperature 1* (``log_softmax(logits)``), so
the distillation temperature stays a training-time choice (see :func:`kdforge.store.soft_targets`):

* ``"fp16"``: ``float16(logp)``. Relative rounding error <= 2**-11, i.e. an absolute error
  in log space <= ``|logp| * 2**-11`` (<= 0.0078 nats at logp = -16; the relative error of
  the probability is the same number). ``-inf`` is stored as the float16 minimum -65504.
* ``"uint8"``: ``q = round(-logp / step)`` clipped to [0, 255], ``step = value_max / 255``
  (``value_max`` defaults to 16 nats, stored in the layout); read back as ``-q * step``. For
  ``logp >= -value_max`` the error in log space is at most ``step / 2`` (0.0314 nats with
  ``value_max = 16``: a probability is off by a factor within ``exp(+-0.0314)``, about
  3.2 %); smaller log-probabilities (and ``-inf``) read back as ``-value_max``, i.e. a

View parameters are put on the store's grids before they are labelled
(:mod:`kdforge.store.quantize`); records are built and decoded by :mod:`kdforge.store.codec`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.store import codec
from kdforge.store.records import StoreRecords
from kdforge.store.seeds import MAX_SAMPLES, MAX_VIEWS

FORMAT_NAME = "kdforge.soft_label_store"
FORMAT_VERSION = 1
META_FILE = "meta.json"

VALUE_FORMATS = ("fp16", "uint8")
VIEW_KINDS = ("image", "signal", "none")
FILL_MODES = ("smooth", "renorm")
_CROP_SIZE = {"image": 4, "signal": 2, "none": 0}
_FP16_MIN = float(np.finfo(np.float16).min)  # -65504
_LAYOUT_DEFAULTS = {"value_format", "view_kind", "has_mix", "value_max"}


@dataclass(frozen=True)
class StoreLayout:
    """What one store holds and how one record (one view) is laid out.

    Attributes:
        num_samples: ``N``, samples of the data set (ids 0..N-1, fewer than 2**32).
        views_per_sample: ``V``, stored views of each sample (view ids 0..V-1).
        num_classes: ``K``, classes of the teacher's output.
        top_k: ``k``, classes kept per view (``1 <= k <= K``).
        value_format: ``"uint8"`` (quantised log-probabilities, error <= step/2 in log
            space) or ``"fp16"`` (float16 log-probabilities). See the module docstring.
        view_kind: ``"image"`` (4 crop fractions + flip), ``"signal"`` (2 crop fractions
            + flip) or ``"none"`` (no view parameters).
        has_mix: store a mixup partner sample id and ratio per view.
        value_max: the largest ``-log p`` the uint8 format resolves (nats); ``step =
            value_max / 255``. Kept (and ignored) for fp16.

    ``index_dtype`` is derived: ``"uint16"`` if ``K <= 65535`` else ``"uint32"``.
    """

    num_samples: int
    views_per_sample: int
    num_classes: int
    top_k: int
    value_format: Literal["fp16", "uint8"] = "uint8"
    view_kind: Literal["image", "signal", "none"] = "image"
    has_mix: bool = False
    value_max: float = 16.0

    def __post_init__(self) -> None:
        for name in ("num_samples", "views_per_sample", "num_classes", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise StoreError(f"StoreLayout.{name} must be a positive integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.num_samples > MAX_SAMPLES:
            raise StoreError(
                f"StoreLayout.num_samples must be below 2**32 (sample ids are uint32); got "
                f"{self.num_samples}"
            )
        if self.views_per_sample > MAX_VIEWS:
            raise StoreError(
                f"StoreLayout.views_per_sample must be at most 2**30; got {self.views_per_sample}"
            )
        if self.num_classes > 2**32 - 1:
            raise StoreError(f"StoreLayout.num_classes must be below 2**32; got {self.num_classes}")
        if self.top_k > self.num_classes:
            raise StoreError(
                f"StoreLayout.top_k ({self.top_k}) cannot exceed num_classes "
                f"({self.num_classes}); use top_k <= num_classes"
            )
        if self.value_format not in VALUE_FORMATS:
            raise StoreError(
                f"StoreLayout.value_format must be one of {VALUE_FORMATS}; got "
                f"{self.value_format!r}"
            )
        if self.view_kind not in VIEW_KINDS:
            raise StoreError(
                f"StoreLayout.view_kind must be one of {VIEW_KINDS}; got {self.view_kind!r}"
            )
        object.__setattr__(self, "has_mix", bool(self.has_mix))
        value_max = float(self.value_max)
        if not (math.isfinite(value_max) and value_max > 0):
            raise StoreError(
                f"StoreLayout.value_max must be finite and > 0; got {self.value_max!r}"
            )
        object.__setattr__(self, "value_max", value_max)

    # derived properties

    @property
    def index_dtype(self) -> str:
        """``"uint16"`` if ``K <= 65535`` else ``"uint32"``: class indices stay exact."""
        return "uint16" if self.num_classes <= 65535 else "uint32"

    @property
    def crop_size(self) -> int:
        """Crop coordinates per view: 4 (image), 2 (signal) or 0 (none)."""
        return _CROP_SIZE[self.view_kind]

    @property
    def step(self) -> float:
        """The uint8 format's step in log space, ``value_max / 255`` (max error step/2)."""
        return self.value_max / 255.0

    @property
    def min_logp(self) -> float:
        """The smallest storable log-probability (``-inf`` and below are clamped to it)."""
        return -self.value_max if self.value_format == "uint8" else _FP16_MIN

    @property
    def num_records(self) -> int:
        return self.num_samples * self.views_per_sample

    def record_dtype(self) -> np.dtype:
        """The packed (``align=False``) little-endian numpy dtype of one record (one view)."""
        k = self.top_k
        index = "<u2" if self.index_dtype == "uint16" else "<u4"
        value = "<f2" if self.value_format == "fp16" else "u1"
        spec: list[tuple[Any, ...]] = [("indices", index, (k,)), ("values", value, (k,))]
        if self.view_kind != "none":
            spec += [("crop", "u1", (self.crop_size,)), ("flags", "u1")]
        if self.has_mix:
            spec += [("partner", "<u4"), ("ratio", "u1")]
        return np.dtype(spec, align=False)

    @property
    def bytes_per_view(self) -> int:
        """Bytes of one record: ``record_dtype().itemsize``."""
        return self.record_dtype().itemsize

    # JSON

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["index_dtype"] = self.index_dtype
        out["bytes_per_view"] = self.bytes_per_view
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreLayout:
        """Rebuild a layout from :meth:`to_dict` (derived keys are checked, not trusted)."""
        if not isinstance(data, dict):
            raise StoreError(f"a store layout must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in _LAYOUT_DEFAULTS)
        if missing:
            raise StoreError(f"the store layout lacks the keys {missing}")
        layout = cls(**{k: v for k, v in data.items() if k in names})
        for key in ("index_dtype", "bytes_per_view"):
            if key in data and data[key] != getattr(layout, key):
                raise StoreError(
                    f"the store layout says {key}={data[key]!r} but its other fields imply "
                    f"{getattr(layout, key)!r}; the meta file was edited or written by an "
                    "incompatible version"
                )
        return layout

    # records

    def empty(self, n: int) -> np.ndarray:
        """``n`` zeroed records."""
        return np.zeros(n, dtype=self.record_dtype())

    def encode(
        self,
        indices: Tensor,
        logp: Tensor,
        crop: Tensor | None = None,
        flip: Tensor | None = None,
        partner: Tensor | None = None,
        ratio: Tensor | None = None,
    ) -> np.ndarray:
        """Build ``n`` records from tensors (any device), validating every field.

        Args:
            indices: ``(n, k)`` int, the teacher's top-k classes, distinct, in [0, K).
            logp: ``(n, k)`` float, their log-probabilities at T = 1 (``<= 0``; ``-inf``
                and values below :attr:`min_logp` are clamped to it; positive values up to
                1e-5 from rounding are clamped to 0).
            crop: ``(n, c)`` crop fractions on the grid (see
                :func:`~kdforge.store.quantize_crop`); required unless ``view_kind ==
                "none"``, where it must be ``None``.
            flip: ``(n,)`` bool; ``None`` means no flip.
            partner: ``(n,)`` int mixup partner sample ids in [0, N) (``has_mix`` only).
            ratio: ``(n,)`` mixup ratios on the grid (see
                :func:`~kdforge.store.quantize_ratio`).
        """
        return codec.encode(self, indices, logp, crop, flip, partner, ratio)

    def decode(self, records: np.ndarray) -> StoreRecords:
        """Turn records (a structured array of :meth:`record_dtype`) into tensors."""
        return codec.decode(self, records)

    def decode_bytes(self, rows: np.ndarray) -> StoreRecords:
        """:meth:`decode` for records given as a ``(B, bytes_per_view)`` uint8 array.

        The training path: numpy views of a gathered block of bytes, no structured array
        (on a CPU, each numpy op on a batch's few kilobytes costs a fraction of a torch
        op's dispatch). Gives the same tensors as :meth:`decode`, bit for bit.
        """
        return codec.decode_bytes(self, rows)


__all__ = ["FILL_MODES", "FORMAT_NAME", "FORMAT_VERSION", "META_FILE", "VALUE_FORMATS",
           "VIEW_KINDS", "StoreLayout"]
