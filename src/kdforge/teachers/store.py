"""SoftLabelStore: the teacher's soft labels of many random views, stored once, replayed.

FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV
2022) runs the teacher once, ahead of training, on many random views (crops, flips, mixup
pairs) of every training sample and stores each view's parameters next to the teacher's
top-k soft label. Training then draws one stored view of a sample, *replays* its parameters
with :mod:`kdforge.data.augment` to build the student's input, and reads the soft label from
the store: the teacher never runs during training. This module is the storage layer only:
the format, the writer, the reader, the quantisation and the verification. Generating the
labels (running the teacher) and feeding them to training sit on top of this API.

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
the distillation temperature stays a training-time choice (see :func:`soft_targets`):

* ``"fp16"``: ``float16(logp)``. Relative rounding error <= 2**-11, i.e. an absolute error
  in log space <= ``|logp| * 2**-11`` (<= 0.0078 nats at logp = -16; the relative error of
  the probability is the same number). ``-inf`` is stored as the float16 minimum -65504.
* ``"uint8"``: ``q = round(-logp / step)`` clipped to [0, 255], ``step = value_max / 255``
  (``value_max`` defaults to 16 nats, stored in the layout); read back as ``-q * step``. For
  ``logp >= -value_max`` the error in log space is at most ``step / 2`` (0.0314 nats with
  ``value_max = 16``: a probability is off by a factor within ``exp(+-0.0314)``, about
  3.2 %); smaller log-probabilities (and ``-inf``) read back as ``-value_max``, i.e. a
  probability of ``exp(-16) = 1.1e-7``. With a temperature ``T`` the log-space error of the
  tempered distribution scales by ``1 / T``.

View parameters are quantised *before* the view is applied and labelled, so replay is
exact: the generator calls :func:`quantize_crop` (and :func:`quantize_ratio` for mixup) on
the drawn parameters, applies the view with the quantised parameters, runs the teacher on
it and stores the same numbers; :meth:`SoftLabelStore.read` returns bit-identical float32
values. Crops lie on the grid ``j / 255`` (a crop length of at least 1/255; an end that
rounding would push past 1 is pulled back), ratios on ``(255 + j) / 510``. Per-sample noise
seeds are not stored: :func:`view_seed` derives them from the store seed, the sample id and
the view id. Mixup is stored (partner sample id + ratio); a CutMix box is not: function-matching
stores (:class:`kdforge.teachers.stored.MixedViews`) draw every parameter of a view from
:func:`view_uniforms`, a pure function of (store seed, sample, view), and derive the box from
those uniforms and the stored ratio (drawn on its grid by :func:`ratio_from_uniform`).

Several processes may write one store (see :class:`SoftLabelStoreWriter`): each writes a
disjoint set of shard ids, every shard file comes with a small sidecar ``.json`` holding its
checksum, and one process's :meth:`SoftLabelStoreWriter.close` collects the sidecars into
``meta.json``. Writes are atomic (temporary file in the same directory, fsync,
``os.replace``), so a crash leaves either the old file or the new one; a rerun resumes,
skipping the shards that verify.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.data.augment import mix32, seeded_uniform

__all__ = [
    "FORMAT_VERSION",
    "SoftLabelStore",
    "SoftLabelStoreWriter",
    "StoreError",
    "StoreLayout",
    "StoreRecords",
    "as_ids",
    "dense_arrays",
    "dense_targets",
    "log_probs",
    "quantize_crop",
    "quantize_ratio",
    "ratio_code_cdf",
    "ratio_from_uniform",
    "soft_targets",
    "view_seed",
    "view_uniforms",
]

FORMAT_NAME = "kdforge.soft_label_store"
FORMAT_VERSION = 1
META_FILE = "meta.json"

VALUE_FORMATS = ("fp16", "uint8")
VIEW_KINDS = ("image", "signal", "none")
FILL_MODES = ("smooth", "renorm")
_CROP_SIZE = {"image": 4, "signal": 2, "none": 0}
_FP16_MIN = float(np.finfo(np.float16).min)  # -65504
_LOG_FLOOR = math.log(float(torch.finfo(torch.float32).tiny))  # about -87.3
_MAX_SAMPLES = 2**32 - 1  # sample ids (and mixup partners) are uint32
_MAX_VIEWS = 2**30  # view ids enter view_seed as 30 bits
_GRID_TOLERANCE = 1e-3  # in units of the grid step: float32 rounding of j / 255 is ~1e-5
_POSITIVE_LOGP_TOLERANCE = 1e-5  # rounding of log_softmax may give tiny positive values


# --- quantisation of the view parameters ---------------------------------------------------


def _crop_codes(crop: Tensor) -> Tensor:
    """uint8 grid codes (as int64) of crop fractions, keeping each box inside [0, 1].

    Columns come in (start, length) pairs: images (top, left, height, width) pair column 0
    with 2 and 1 with 3, signals (start, length) pair 0 with 1. A length is at least one
    step; a start + length that rounding pushes past 255 is pulled back to 255 - start.
    """
    q = torch.round(crop.detach().to(torch.float64) * 255.0).clamp(0, 255).to(torch.int64)
    half = q.shape[-1] // 2
    start, length = q[..., :half], q[..., half:]
    length = torch.minimum(length.clamp(min=1), 255 - start.clamp(max=254))
    start = start.clamp(max=254)
    return torch.cat([start, length], dim=-1)


def _crop_from_codes(codes: Tensor | np.ndarray) -> Tensor:
    if isinstance(codes, np.ndarray):  # the read path: numpy, bit-identical to the torch ops
        return torch.from_numpy(codes.astype(np.float32) / np.float32(255.0))
    return codes.to(torch.float32) / 255.0


def quantize_crop(crop: Tensor) -> Tensor:
    """Round crop fractions to the store's grid ``j / 255`` (float32, same shape).

    ``crop`` is ``AugmentParams.crop``: ``(B, 4)`` (top, left, height, width) for images or
    ``(B, 2)`` (start, length) for signals, fractions of the input. The generator must call
    this *before* applying the view, so the view it labels is the view training replays;
    the result is exactly what :meth:`SoftLabelStore.read` returns, and quantising again
    changes nothing. Lengths are at least 1/255 and a box never ends past 1.
    """
    crop = torch.as_tensor(crop)
    if crop.dim() != 2 or crop.shape[1] not in (2, 4):
        raise StoreError(
            f"quantize_crop expects (B, 4) image or (B, 2) signal crop fractions; got shape "
            f"{tuple(crop.shape)}"
        )
    return _crop_from_codes(_crop_codes(crop)).to(crop.device)


def _ratio_codes(ratio: Tensor) -> Tensor:
    q = torch.round((ratio.detach().to(torch.float64) - 0.5) * 510.0)
    return q.clamp(0, 255).to(torch.int64)


def _ratio_from_codes(codes: Tensor | np.ndarray) -> Tensor:
    if isinstance(codes, np.ndarray):  # the read path: numpy, bit-identical to the torch ops
        return torch.from_numpy((codes.astype(np.float32) + np.float32(255.0))
                                / np.float32(510.0))
    return (codes.to(torch.float32) + 255.0) / 510.0


def quantize_ratio(ratio: Tensor) -> Tensor:
    """Round mixup ratios in [0.5, 1] to the store's grid ``(255 + j) / 510`` (float32).

    ``ratio`` is ``MixParams.ratio`` (the weight of the sample's own image, folded to
    ``>= 0.5`` by :class:`kdforge.data.augment.Mixup`). Call it before mixing, like
    :func:`quantize_crop`; idempotent; values outside [0.5, 1] raise :class:`StoreError`.
    """
    ratio = torch.as_tensor(ratio)
    _check_ratio_range(ratio)
    return _ratio_from_codes(_ratio_codes(ratio)).to(ratio.device)


def ratio_code_cdf(folded_cdf: Callable[[Tensor], Tensor]) -> Tensor:
    """``(255,)`` float64: ``P(quantize_ratio(r) <= (255 + j) / 510)`` for ``j = 0..254``.

    ``folded_cdf`` is the distribution function of the mixup ratio ``r`` on [0.5, 1] (e.g.
    :meth:`kdforge.data.augment.Mixup.folded_cdf`); it is evaluated at the upper edges
    ``(255.5 + j) / 510`` of the values :func:`quantize_ratio` rounds to code ``j``. Pass the
    table to :func:`ratio_from_uniform` (compute it once per distribution).
    """
    upper = (torch.arange(255, dtype=torch.float64) + 255.5) / 510.0
    table = torch.as_tensor(folded_cdf(upper), dtype=torch.float64).reshape(-1)
    if table.shape != (255,) or not bool(torch.isfinite(table).all()) or bool(
        (table[1:] < table[:-1]).any()
    ):
        raise StoreError("folded_cdf must return a finite non-decreasing value per edge")
    return table


def ratio_from_uniform(u: Tensor, code_cdf: Tensor) -> Tensor:
    """Mixup ratios on the store's grid by inversion of uniforms ``u`` in (0, 1): float32.

    ``code_cdf`` is :func:`ratio_code_cdf` of the ratio's distribution. The result has
    exactly the law of ``quantize_ratio(r)`` for ``r`` of that distribution (code ``j`` is
    returned when ``u`` lies in ``[F_{j-1}, F_j)``), and it is a pure function of ``u``: a
    counter-based uniform (:func:`kdforge.data.augment.seeded_uniform`) gives a ratio that
    any process regenerates alone. The values need no further :func:`quantize_ratio`.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    codes = torch.searchsorted(code_cdf.to(u.device), u.contiguous(), right=True)
    return _ratio_from_codes(codes)


def _check_ratio_range(ratio: Tensor) -> None:
    r = ratio.detach().to(torch.float64)
    bad = ~((r >= 0.5 - 1e-6) & (r <= 1.0 + 1e-6))
    if bool(bad.any()):
        raise StoreError(
            f"mixup ratios must lie in [0.5, 1] (the own image's weight, folded with "
            f"max(a, 1 - a)); got {r[bad][:5].tolist()}"
        )


# --- per-view noise seeds ----------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_M31 = 0x7FFFFFFF


def _hash32_int(x: int) -> int:
    return int(mix32(torch.tensor([x & _M32], dtype=torch.int64))[0])


def view_seed(store_seed: int, sample: Tensor, view: Tensor) -> Tensor:
    """The noise seed of view ``view`` of sample ``sample``: int64 in [0, 2**62).

    The generator passes it as ``AugmentParams.noise_seed``; replay derives the same seed
    from the stored ids, so seeds are not stored. It is a keyed 4-round Feistel permutation
    of the 62-bit number ``sample * 2**30 + view`` (sample < 2**32, view < 2**30), with round
    keys from ``store_seed``: deterministic, non-negative, and *distinct* for distinct
    ``(sample, view)`` under one store seed (a permutation cannot collide). Works on any
    device with int64 ops whose intermediate values stay below 2**49.
    """
    sample = torch.as_tensor(sample).to(torch.int64)
    view = torch.as_tensor(view).to(device=sample.device, dtype=torch.int64)
    sample, view = torch.broadcast_tensors(sample, view)
    if bool(((sample < 0) | (sample > _MAX_SAMPLES)).any()):
        raise StoreError(f"view_seed: sample ids must lie in [0, 2**32); got {sample.tolist()}")
    if bool(((view < 0) | (view >= _MAX_VIEWS)).any()):
        raise StoreError(f"view_seed: view ids must lie in [0, 2**30); got {view.tolist()}")
    # 62-bit block sample << 30 | view, split into two 31-bit halves
    left = sample >> 1
    right = ((sample & 1) << 30) | view
    for round_key in _round_keys(int(store_seed)):
        f = mix32(mix32(right ^ round_key) ^ (round_key >> 3)) & _M31
        left, right = right, left ^ f
    return (left << 31) | right


#: XORed into a view's seed before :func:`view_uniforms` hashes it, so a view's drawn
#: parameters and its noise (:func:`kdforge.data.augment.seeded_normal` of the plain seed)
#: come from different counter streams.
_DRAW_KEY = 0x1B873593_5BD1E995 & ((1 << 62) - 1)


def view_uniforms(store_seed: int, sample: Tensor, view: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 uniforms in (0, 1) of views ``(sample[b], view[b])``.

    A pure function of ``(store_seed, sample, view)``: :func:`view_seed` keyed apart from
    the noise stream, then :func:`kdforge.data.augment.seeded_uniform`. Stores whose view
    parameters must be known without the store (function matching: a view's crop is also
    its partners' view of it, and a CutMix box is not stored) draw them from these numbers,
    so any process regenerates the parameters of any view alone.
    """
    return seeded_uniform(view_seed(store_seed, sample, view) ^ _DRAW_KEY, n)


@functools.lru_cache(maxsize=64)
def _round_keys(store_seed: int) -> tuple[int, ...]:
    """The 4 Feistel round keys of :func:`view_seed` for one store seed (cached: a store
    replays with one seed, and each key costs a few tensor ops)."""
    seed = store_seed & 0xFFFFFFFFFFFFFFFF
    key = _hash32_int((seed & _M32) ^ _hash32_int((seed >> 32) ^ 0x9E3779B9))
    return tuple(_hash32_int(key ^ (0x632BE5AB * (round_id + 1))) for round_id in range(4))


# --- layout ------------------------------------------------------------------------------------


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
        if self.num_samples > _MAX_SAMPLES:
            raise StoreError(
                f"StoreLayout.num_samples must be below 2**32 (sample ids are uint32); got "
                f"{self.num_samples}"
            )
        if self.views_per_sample > _MAX_VIEWS:
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
            crop: ``(n, c)`` crop fractions on the grid (see :func:`quantize_crop`);
                required unless ``view_kind == "none"``, where it must be ``None``.
            flip: ``(n,)`` bool; ``None`` means no flip.
            partner: ``(n,)`` int mixup partner sample ids in [0, N) (``has_mix`` only).
            ratio: ``(n,)`` mixup ratios on the grid (see :func:`quantize_ratio`).
        """
        k = self.top_k
        indices = _as_cpu(indices, "indices")
        logp = _as_cpu(logp, "logp")
        if indices.dim() != 2 or indices.shape[1] != k:
            raise StoreError(f"indices must have shape (n, {k}); got {tuple(indices.shape)}")
        n = indices.shape[0]
        if tuple(logp.shape) != (n, k):
            raise StoreError(
                f"logp must have shape ({n}, {k}) like indices; got {tuple(logp.shape)}"
            )
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise StoreError(f"indices must be an integer tensor; got {indices.dtype}")
        indices = indices.to(torch.int64)
        if n and bool(((indices < 0) | (indices >= self.num_classes)).any()):
            bad = indices[(indices < 0) | (indices >= self.num_classes)][:5].tolist()
            raise StoreError(
                f"class indices must lie in [0, {self.num_classes}) (num_classes); got {bad}"
            )
        if n and k > 1:
            ordered = indices.sort(dim=1).values
            if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
                raise StoreError("each row of indices must name distinct classes (a top-k)")
        logp = logp.to(torch.float64)
        if bool(torch.isnan(logp).any()) or bool((logp == math.inf).any()):
            raise StoreError("logp holds NaN or +inf; store log_softmax(logits) of the teacher")
        if bool((logp > _POSITIVE_LOGP_TOLERANCE).any()):
            raise StoreError(
                f"logp must be log-probabilities (<= 0); got values up to "
                f"{float(logp.max()):.4g}. Store log_softmax(logits), not logits or probabilities"
            )
        logp = logp.clamp(min=self.min_logp, max=0.0)

        out = self.empty(n)
        out["indices"] = indices.numpy()
        if self.value_format == "fp16":
            out["values"] = logp.numpy().astype(np.float16)
        else:
            q = np.rint(-logp.numpy() / self.step)
            out["values"] = np.clip(q, 0, 255).astype(np.uint8)

        if self.view_kind == "none":
            if crop is not None or flip is not None:
                raise StoreError(
                    "this store has view_kind='none': pass crop=None and flip=None, or make the "
                    "store with view_kind='image' or 'signal'"
                )
        else:
            if crop is None:
                raise StoreError(
                    f"crop is required for view_kind={self.view_kind!r}: pass the quantised "
                    f"({self.crop_size}-column) crop fractions of each view"
                )
            crop = _as_cpu(crop, "crop").to(torch.float64)
            if tuple(crop.shape) != (n, self.crop_size):
                raise StoreError(
                    f"crop must have shape ({n}, {self.crop_size}) for view_kind="
                    f"{self.view_kind!r}; got {tuple(crop.shape)}"
                )
            if bool(((crop < 0) | (crop > 1) | torch.isnan(crop)).any()):
                raise StoreError("crop fractions must lie in [0, 1]")
            codes = _crop_codes(crop)
            if bool(((crop * 255.0 - codes.to(torch.float64)).abs() > _GRID_TOLERANCE).any()):
                raise StoreError(
                    "crop fractions are not on the store's grid (j / 255): call quantize_crop "
                    "on the drawn parameters BEFORE applying the view and labelling it, so "
                    "replay reproduces the labelled view exactly"
                )
            out["crop"] = codes.numpy().astype(np.uint8)
            if flip is not None:
                flip = _as_cpu(flip, "flip")
                if tuple(flip.shape) != (n,):
                    raise StoreError(f"flip must have shape ({n},); got {tuple(flip.shape)}")
                out["flags"] = flip.to(torch.bool).numpy().astype(np.uint8)

        if self.has_mix:
            if partner is None or ratio is None:
                raise StoreError(
                    "this store has has_mix=True: pass partner (sample ids) and ratio for every "
                    "view"
                )
            partner = _as_cpu(partner, "partner")
            ratio = _as_cpu(ratio, "ratio").to(torch.float64)
            if tuple(partner.shape) != (n,) or tuple(ratio.shape) != (n,):
                raise StoreError(
                    f"partner and ratio must have shape ({n},); got {tuple(partner.shape)} and "
                    f"{tuple(ratio.shape)}"
                )
            partner = partner.to(torch.int64)
            if bool(((partner < 0) | (partner >= self.num_samples)).any()):
                raise StoreError(
                    f"mixup partners are sample ids in [0, {self.num_samples}); got "
                    f"{partner[(partner < 0) | (partner >= self.num_samples)][:5].tolist()} "
                    "(convert batch positions to sample ids first)"
                )
            _check_ratio_range(ratio)
            codes = _ratio_codes(ratio)
            if bool(
                ((ratio - 0.5) * 510.0 - codes.to(torch.float64)).abs().gt(_GRID_TOLERANCE).any()
            ):
                raise StoreError(
                    "mixup ratios are not on the store's grid: call quantize_ratio before "
                    "mixing and labelling"
                )
            out["partner"] = partner.numpy().astype(np.uint32)
            out["ratio"] = codes.numpy().astype(np.uint8)
        elif partner is not None or ratio is not None:
            raise StoreError(
                "this store has has_mix=False: pass partner=None and ratio=None, or make the "
                "store with has_mix=True"
            )
        return out

    def decode(self, records: np.ndarray) -> StoreRecords:
        """Turn records (a structured array of :meth:`record_dtype`) into tensors."""
        indices = torch.from_numpy(records["indices"].astype(np.int64))
        values = records["values"]
        if self.value_format == "fp16":
            logp = torch.from_numpy(values.astype(np.float32))
        else:
            logp = torch.from_numpy(values.astype(np.float32)) * float(-self.step)
        crop = flip = partner = ratio = None
        if self.view_kind != "none":
            crop = _crop_from_codes(torch.from_numpy(records["crop"].astype(np.int64)))
            flip = torch.from_numpy((records["flags"] & 1).astype(bool))
        if self.has_mix:
            partner = torch.from_numpy(records["partner"].astype(np.int64))
            ratio = _ratio_from_codes(torch.from_numpy(records["ratio"].astype(np.int64)))
        return StoreRecords(indices, logp, crop, flip, partner, ratio)


    def decode_bytes(self, rows: np.ndarray) -> StoreRecords:
        """:meth:`decode` for records given as a ``(B, bytes_per_view)`` uint8 array.

        The training path: numpy views of a gathered block of bytes, no structured array
        (on a CPU, each numpy op on a batch's few kilobytes costs a fraction of a torch
        op's dispatch). Gives the same tensors as :meth:`decode`, bit for bit.
        """
        offsets = _field_offsets(self)

        def field(name: str, dtype: str) -> np.ndarray:
            start, size = offsets[name]
            part = rows[:, start:start + size]
            return part if dtype == "u1" else np.ascontiguousarray(part).view(dtype)

        k = self.top_k
        indices = field("indices", "<u4" if self.index_dtype == "uint32" else "<u2")
        if self.value_format == "fp16":
            logp = field("values", "<f2").astype(np.float32)
        else:
            logp = field("values", "u1").astype(np.float32) * np.float32(-self.step)
        crop = flip = partner = ratio = None
        if self.view_kind != "none":
            crop = _crop_from_codes(field("crop", "u1"))
            flip = torch.from_numpy((field("flags", "u1")[:, 0] & 1).astype(bool))
        if self.has_mix:
            partner = torch.from_numpy(field("partner", "<u4")[:, 0].astype(np.int64))
            ratio = _ratio_from_codes(field("ratio", "u1")[:, 0])
        return StoreRecords(torch.from_numpy(indices.astype(np.int64).reshape(-1, k)),
                            torch.from_numpy(logp.reshape(-1, k)), crop, flip, partner, ratio)


@functools.lru_cache(maxsize=32)
def _field_offsets(layout: StoreLayout) -> dict[str, tuple[int, int]]:
    """``name -> (byte offset, byte size)`` of each field of a layout's record."""
    dtype = layout.record_dtype()
    return {name: (dtype.fields[name][1], dtype.fields[name][0].itemsize)
            for name in dtype.names}


_LAYOUT_DEFAULTS = {"value_format", "view_kind", "has_mix", "value_max"}


def _as_cpu(value: Any, name: str) -> Tensor:
    try:
        return torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise StoreError(f"{name} must be a tensor or array; got {type(value).__name__}") from err


# --- records and soft targets ------------------------------------------------------------------


@dataclass
class StoreRecords:
    """Decoded records of a batch of views (CPU tensors; see :meth:`to`).

    Attributes:
        indices: ``(B, k)`` int64 top-k classes.
        logp: ``(B, k)`` float32 log-probabilities at T = 1 (dequantised).
        crop: ``(B, c)`` float32 crop fractions (exact grid values), or ``None``.
        flip: ``(B,)`` bool, or ``None``.
        partner: ``(B,)`` int64 mixup partner *sample ids*, or ``None``.
        ratio: ``(B,)`` float32 mixup ratios (own image's weight), or ``None``.
    """

    indices: Tensor
    logp: Tensor
    crop: Tensor | None = None
    flip: Tensor | None = None
    partner: Tensor | None = None
    ratio: Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str) -> StoreRecords:
        if self.indices.device == torch.device(device):
            return self
        return StoreRecords(
            **{
                f.name: None if (v := getattr(self, f.name)) is None else v.to(device)
                for f in fields(self)
            }
        )

    def augment_params(self, noise_seed: Tensor | None = None) -> Any:
        """The crop and flip as :class:`kdforge.data.augment.AugmentParams` for replay.

        ``noise_seed`` (signals with noise): :func:`view_seed` of the same sample and view
        ids (or :meth:`SoftLabelStore.view_seed`).
        """
        from kdforge.data.augment import AugmentParams

        return AugmentParams(crop=self.crop, flip=self.flip, noise_seed=noise_seed)


def _check_records(k: int, max_index: int | None, num_classes: int, fill: str) -> None:
    """Refuse a fill mode or class count that does not fit records of top-``k`` classes
    whose largest class index is ``max_index`` (``None``: no records)."""
    if fill not in FILL_MODES:
        raise StoreError(f"fill must be one of {FILL_MODES}; got {fill!r}")
    if k > num_classes:
        raise StoreError(f"the records hold top-{k} classes but num_classes is {num_classes}")
    if max_index is not None and max_index >= num_classes:
        raise StoreError(
            f"the records name class {max_index} but num_classes is {num_classes}: pass the "
            "store's num_classes"
        )


def _target_logits(records: StoreRecords, num_classes: int, fill: str) -> Tensor:
    """``(B, K)`` un-normalised log-weights of the T = 1 target (see :func:`soft_targets`)."""
    indices = records.indices.to(torch.int64)
    logp = records.logp.to(torch.float32)
    batch, k = indices.shape
    _check_records(k, int(indices.max()) if batch else None, num_classes, fill)
    others = num_classes - k
    if fill == "smooth" and others > 0:
        missing = (1.0 - logp.exp().sum(dim=1, keepdim=True)).clamp(min=0.0)
        base = torch.log(missing / others)  # -inf where nothing is missing
    else:
        base = torch.full((batch, 1), -math.inf, device=logp.device)
    out = base.expand(batch, num_classes).clone()
    return out.scatter_(1, indices, logp)


def dense_targets(records: StoreRecords, num_classes: int,
                  fill: str = "smooth") -> tuple[Tensor, Tensor]:
    """``(log_probs, probs)``, both ``(B, K)`` float32: the T = 1 target of the records.

    The same distribution as :func:`soft_targets` and :func:`log_probs` at ``T = 1``, in
    closed form: with ``p`` the stored top-k probabilities and ``S = sum_i p_i``, the
    un-normalised row holds ``p`` on the top-k and, for ``"smooth"``, ``m / (K - k)`` on
    each other class, ``m = max(0, 1 - S)``; its sum is ``Z = S + m`` (``S`` for
    ``"renorm"``). ``log_probs`` is clamped below at ``log(float32 tiny)`` as in
    :func:`log_probs`.

    This runs for every training batch read from a store, in the data loader, so it is
    computed with numpy on the CPU (:func:`dense_arrays`): no softmax, and about a dozen
    array ops that cost a fraction of torch's per-op dispatch at this size. Records on
    another device are copied to the CPU and the results moved back.
    """
    device = records.logp.device
    log_q, q = dense_arrays(records.logp.detach().to("cpu", torch.float32).numpy(),
                            records.indices.detach().to("cpu", torch.int64).numpy(),
                            num_classes, fill)
    return torch.from_numpy(log_q).to(device), torch.from_numpy(q).to(device)


def dense_arrays(logp: np.ndarray, indices: np.ndarray, num_classes: int,
                 fill: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """:func:`dense_targets` of ``(B, k)`` float32 log-probabilities and int64 classes."""
    batch, k = logp.shape
    _check_records(k, int(indices.max()) if batch else None, num_classes, fill)
    p = np.exp(logp)
    total = (p @ np.ones(k, dtype=np.float32))[:, None]  # a row sum; numpy's sum(axis=1)
    probs = np.zeros((batch, num_classes), dtype=np.float32)  # is 8x slower at this size
    others = num_classes - k
    if fill == "smooth" and others > 0:
        missing = np.maximum(np.float32(1.0) - total, np.float32(0.0))
        probs += missing / np.float32(others)
        total += missing
    flat = (indices + np.arange(batch)[:, None] * num_classes).reshape(-1)
    probs.reshape(-1)[flat] = p.reshape(-1)  # scatter the top-k into their classes
    probs /= total
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped to the floor
        log_probs = np.maximum(np.log(probs), np.float32(_LOG_FLOOR))
    return log_probs, probs


def as_ids(ids: Any) -> np.ndarray:
    """Sample or view ids (tensor, array or sequence) as a flat int64 numpy array (CPU)."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    if isinstance(ids, Tensor):
        return ids.detach().reshape(-1).to("cpu", torch.int64).numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def _check_temperature(T: float) -> float:
    T = float(T)
    if not (math.isfinite(T) and T > 0):
        raise StoreError(f"the temperature T must be finite and > 0; got {T!r}")
    return T


def soft_targets(
    records: StoreRecords, num_classes: int, T: float = 1.0, fill: str = "smooth"
) -> Tensor:
    """``(B, K)`` float32 target probabilities from stored top-k log-probabilities.

    At ``T = 1``:

    * ``fill="smooth"`` (FKD's marginal smoothing): the top-k entries are the stored
      probabilities ``p_i = exp(logp_i)``; the missing mass ``m = max(0, 1 - sum_i p_i)`` is
      spread evenly, ``m / (K - k)`` each, over the other ``K - k`` classes;
    * ``fill="renorm"``: ``p_i / sum_j p_j`` on the top-k, 0 elsewhere.

    Each row is finally divided by its sum, which changes nothing (up to float rounding)
    unless quantisation pushed the stored top-k mass above 1. With ``T != 1`` the temperature
    is applied to that full T = 1 distribution ``q``: the target is ``q^(1/T)`` normalised,
    i.e. ``softmax(log q / T)``. For ``"renorm"`` this is ``p_i^(1/T)`` normalised over the
    top-k; for ``"smooth"`` each of the ``K - k`` filled classes keeps the weight
    ``(m / (K - k))^(1/T)`` in the normalisation, as if the teacher had given them equal
    probability. (Tempering only the top-k and filling afterwards would leave nothing to
    fill.) With ``K == k`` both modes agree.
    """
    T = _check_temperature(T)
    if T == 1.0:
        return dense_targets(records, num_classes, fill)[1]
    return torch.softmax(_target_logits(records, num_classes, fill) / T, dim=1)


def log_probs(
    records: StoreRecords, num_classes: int, T: float = 1.0, fill: str = "smooth"
) -> Tensor:
    """``log(soft_targets(...))`` as ``(B, K)`` float32, computed stably and clamped below at
    ``log(float32 tiny)`` (about -87.3), so zero-probability classes stay finite."""
    T = _check_temperature(T)
    if T == 1.0:
        return dense_targets(records, num_classes, fill)[0]
    out = torch.log_softmax(_target_logits(records, num_classes, fill) / T, dim=1)
    return out.clamp(min=_LOG_FLOOR)


# --- files -------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, chunks: Iterable[Any]) -> None:
    """Write ``chunks`` (bytes-like) to ``path`` atomically: temporary file in the same
    directory, fsync, ``os.replace``. Readers see the old file or the complete new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, [(json.dumps(obj, indent=2) + "\n").encode()])


def _read_json(path: Path, what: str, fix: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{what} {path} cannot be read ({err}); {fix}") from None


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _normalise_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise StoreError(
            f"the store meta must be JSON-serialisable (strings, numbers, lists, dicts); {err}"
        ) from None


def _shard_name(shard_id: int, num_shards: int) -> str:
    width = max(5, len(str(num_shards - 1)))
    return f"shard-{shard_id:0{width}d}"


class _Plan:
    """Shard arithmetic shared by the writer and the reader."""

    def __init__(self, layout: StoreLayout, samples_per_shard: int) -> None:
        if (
            isinstance(samples_per_shard, bool)
            or int(samples_per_shard) != samples_per_shard
            or samples_per_shard < 1
        ):
            raise StoreError(
                f"samples_per_shard must be a positive integer; got {samples_per_shard!r}"
            )
        self.layout = layout
        self.samples_per_shard = int(samples_per_shard)
        self.num_shards = -(-layout.num_samples // self.samples_per_shard)

    def check_id(self, shard_id: int) -> int:
        if (
            isinstance(shard_id, bool)
            or int(shard_id) != shard_id
            or not 0 <= shard_id < self.num_shards
        ):
            raise StoreError(
                f"shard id {shard_id!r} is out of range: this store has {self.num_shards} shards "
                f"(ids 0..{self.num_shards - 1})"
            )
        return int(shard_id)

    def samples(self, shard_id: int) -> tuple[int, int]:
        lo = shard_id * self.samples_per_shard
        return lo, min(lo + self.samples_per_shard, self.layout.num_samples)

    def num_records(self, shard_id: int) -> int:
        lo, hi = self.samples(shard_id)
        return (hi - lo) * self.layout.views_per_sample

    def num_bytes(self, shard_id: int) -> int:
        return self.num_records(shard_id) * self.layout.bytes_per_view

    def name(self, shard_id: int) -> str:
        return _shard_name(shard_id, self.num_shards)


# --- writer ------------------------------------------------------------------------------------


class SoftLabelStoreWriter:
    """Writes a store: fixed-size shard files, their checksums, then ``meta.json``.

    Shard ``s`` holds samples ``[s * S, min((s + 1) * S, N))`` with all ``V`` views of each,
    records ordered by (sample, view): record ``(i - s * S) * V + v`` is view ``v`` of
    sample ``i``. :meth:`write_shard` writes a whole shard atomically, then its sidecar
    ``shard-XXXXX.json`` (sha256, sample range, size, and a fingerprint of the layout, the
    shard size and the user meta).

    Several processes: construct a writer with the *same* layout, meta and
    ``samples_per_shard`` in each process and give each process a disjoint set of shard ids
    (e.g. ``range(rank, num_shards, world_size)``); a shard file is written only by the
    writer that owns it. When all have finished, *one* process calls :meth:`close`, which
    collects every sidecar (refusing missing shards and sidecars of another configuration)
    and writes ``meta.json``. Sidecars stay next to the shards (a few hundred bytes each).

    Resume: :meth:`finished_shards` lists the shards whose file exists and matches its
    recorded sha256 (the sidecar's, or ``meta.json``'s when the sidecar is gone); write the
    others (:meth:`pending_shards`), which replaces corrupt or truncated files. Writing a
    shard removes a stale ``meta.json``, so readers never see checksums that no longer match:
    call :meth:`close` again afterwards. Temporary files of a killed writer (``.shard-*.tmp``)
    may be left behind and can be deleted when no writer runs.

    Args:
        path: the store directory (created).
        layout: the :class:`StoreLayout`.
        meta: JSON-serialisable user meta. Keys used by
            :meth:`SoftLabelStore.check_compatible`: ``"teacher"`` (identity and weight
            checksum), ``"dataset"`` (name and length), ``"view"`` (the view policy config);
            :meth:`SoftLabelStore.view_seed` reads ``"store_seed"``.
        samples_per_shard: ``S``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layout: StoreLayout,
        meta: dict[str, Any] | None = None,
        samples_per_shard: int = 4096,
    ) -> None:
        if not isinstance(layout, StoreLayout):
            raise StoreError(f"layout must be a StoreLayout; got {type(layout).__name__}")
        self.path = Path(path)
        self.layout = layout
        self.meta = _normalise_meta(meta)
        self._plan = _Plan(layout, samples_per_shard)
        self.fingerprint = hashlib.sha256(
            _canonical(
                {
                    "version": FORMAT_VERSION,
                    "layout": layout.to_dict(),
                    "samples_per_shard": self._plan.samples_per_shard,
                    "meta": self.meta,
                }
            ).encode()
        ).hexdigest()
        self._closed = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the store directory {self.path}: {err}") from None
        meta_path = self.path / META_FILE
        if meta_path.exists():
            existing = self._read_meta_file()
            if existing is not None and existing.get("fingerprint") != self.fingerprint:
                raise StoreError(
                    f"{meta_path} belongs to a store of another configuration (layout, shard "
                    "size or meta differ); write to a new directory, or delete this one to "
                    "regenerate it"
                )

    @property
    def num_shards(self) -> int:
        return self._plan.num_shards

    @property
    def samples_per_shard(self) -> int:
        return self._plan.samples_per_shard

    def shard_samples(self, shard_id: int) -> tuple[int, int]:
        """The sample range ``[lo, hi)`` of a shard."""
        return self._plan.samples(self._plan.check_id(shard_id))

    def shard_path(self, shard_id: int) -> Path:
        return self.path / (self._plan.name(self._plan.check_id(shard_id)) + ".bin")

    def _sidecar_path(self, shard_id: int) -> Path:
        return self.path / (self._plan.name(shard_id) + ".json")

    def encode(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Records from tensors: :meth:`StoreLayout.encode`."""
        return self.layout.encode(*args, **kwargs)

    def write_shard(self, shard_id: int, records: np.ndarray) -> Path:
        """Write all records of one shard atomically (then its sidecar); returns its path."""
        if self._closed:
            raise StoreError(f"the writer of {self.path} is closed; open a new writer to resume")
        shard_id = self._plan.check_id(shard_id)
        dtype = self.layout.record_dtype()
        if not isinstance(records, np.ndarray) or records.dtype != dtype:
            got = records.dtype if isinstance(records, np.ndarray) else type(records).__name__
            raise StoreError(
                f"write_shard({shard_id}) expects a structured array of dtype {dtype} (build it "
                f"with encode); got {got}"
            )
        expected = self._plan.num_records(shard_id)
        if records.shape != (expected,):
            lo, hi = self._plan.samples(shard_id)
            raise StoreError(
                f"shard {shard_id} holds samples [{lo}, {hi}) x {self.layout.views_per_sample} "
                f"views = {expected} records, ordered (sample, view); got shape {records.shape}"
            )
        raw = np.ascontiguousarray(records).view(np.uint8)
        digest = hashlib.sha256(raw).hexdigest()
        # the store is changing: a meta.json written earlier may no longer match
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / META_FILE)
        target = self.shard_path(shard_id)
        _atomic_write(target, [raw])
        lo, hi = self._plan.samples(shard_id)
        _write_json(
            self._sidecar_path(shard_id),
            {
                "id": shard_id,
                "file": target.name,
                "sha256": digest,
                "samples": [lo, hi],
                "bytes": int(raw.nbytes),
                "fingerprint": self.fingerprint,
            },
        )
        return target

    def _read_meta_file(self) -> dict[str, Any] | None:
        try:
            with open(self.path / META_FILE) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _recorded(self) -> dict[int, tuple[dict[str, Any], str]]:
        """shard id -> (entry with sha256 and bytes, where it came from), for this config."""
        found: dict[int, tuple[dict[str, Any], str]] = {}
        meta = self._read_meta_file()
        if meta is not None and meta.get("fingerprint") == self.fingerprint:
            for entry in meta.get("shards", []):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    found[int(entry["id"])] = (entry, META_FILE)
        for shard_id in range(self.num_shards):
            side = self._sidecar_path(shard_id)
            try:
                with open(side) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and entry.get("fingerprint") == self.fingerprint:
                found[shard_id] = (entry, side.name)
        return found

    def shard_status(self) -> dict[int, str]:
        """Every shard id -> ``"ok"`` or why it must be (re)written: ``"missing"``,
        ``"unrecorded"`` (a file without a checksum of this configuration), ``"truncated
        (... bytes, expected ...)"`` or ``"corrupt (sha256 mismatch)"``. Reads every shard."""
        recorded = self._recorded()
        status: dict[int, str] = {}
        for shard_id in range(self.num_shards):
            target = self.shard_path(shard_id)
            expected = self._plan.num_bytes(shard_id)
            if not target.exists():
                status[shard_id] = "missing"
            elif shard_id not in recorded:
                status[shard_id] = "unrecorded"
            elif (size := target.stat().st_size) != expected:
                status[shard_id] = f"truncated ({size} bytes, expected {expected})"
            elif _sha256_file(target) != recorded[shard_id][0].get("sha256"):
                status[shard_id] = "corrupt (sha256 mismatch)"
            else:
                status[shard_id] = "ok"
        return status

    def finished_shards(self) -> list[int]:
        """Ids of the shards that exist and verify (skip them when resuming).

        Files that exist but fail (truncated, corrupt, no checksum) are reported with a
        :class:`UserWarning` naming the shard and the reason; they count as unfinished.
        """
        status = self.shard_status()
        for shard_id, state in status.items():
            if state not in ("ok", "missing"):
                warnings.warn(
                    f"shard {self.shard_path(shard_id)} is {state}; it will be rewritten",
                    stacklevel=2,
                )
        return [s for s, state in status.items() if state == "ok"]

    def pending_shards(self) -> list[int]:
        """Ids of the shards still to write (missing, truncated, corrupt or unrecorded)."""
        status = self.shard_status()
        return [s for s, state in status.items() if state != "ok"]

    def close(self, verify: bool = False) -> Path:
        """Collect the shards' checksums into ``meta.json`` (atomically); returns its path.

        Call it in ONE process, after every writer has finished. Every shard needs its file
        with the expected size and a sidecar (or an entry of an earlier ``meta.json``) of
        this configuration; ``verify=True`` also re-hashes every shard (reads the store).
        """
        recorded = self._recorded()
        problems: list[str] = []
        shards = []
        for shard_id in range(self.num_shards):
            target = self.shard_path(shard_id)
            expected = self._plan.num_bytes(shard_id)
            if shard_id not in recorded:
                problems.append(f"{target.name}: not written (no checksum sidecar)")
                continue
            entry = recorded[shard_id][0]
            size = target.stat().st_size if target.exists() else None
            if size is None:
                problems.append(f"{target.name}: missing")
                continue
            if size != expected:
                problems.append(f"{target.name}: {size} bytes, expected {expected}")
                continue
            if verify and _sha256_file(target) != entry.get("sha256"):
                problems.append(f"{target.name}: sha256 mismatch")
                continue
            lo, hi = self._plan.samples(shard_id)
            shards.append(
                {
                    "id": shard_id,
                    "file": target.name,
                    "sha256": entry["sha256"],
                    "samples": [lo, hi],
                    "bytes": expected,
                }
            )
        if problems:
            shown = "; ".join(problems[:8]) + (
                f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
            )
            raise StoreError(
                f"cannot finish the store {self.path}: {len(problems)} of {self.num_shards} "
                f"shards are not done ({shown}). Run the writers for these shards (rerunning "
                "the generation command resumes) and call close() again"
            )
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "layout": self.layout.to_dict(),
            "record_dtype": [list(map(_jsonable, d)) for d in self.layout.record_dtype().descr],
            "samples_per_shard": self.samples_per_shard,
            "num_shards": self.num_shards,
            "shards": shards,
            "meta": self.meta,
        }
        target = self.path / META_FILE
        _write_json(target, meta)
        self._closed = True
        return target


def _jsonable(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


# --- reader ------------------------------------------------------------------------------------

_REGENERATE = (
    "regenerate it by rerunning the same generation command (it resumes: only shards that "
    "fail verification are rewritten)"
)


class SoftLabelStore:
    """Reads a finished store: memory-maps the shards and looks views up by (sample, view).

    Opening checks that ``meta.json`` is readable and of a supported version and that every
    shard exists with exactly the expected size, so a truncated shard is refused up front
    and never yields garbage; :meth:`verify` also checks the sha256 of every shard (reads
    the whole store). The memory maps open lazily and are not pickled, so a store can be
    handed to ``DataLoader`` workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not self.path.is_dir():
            raise StoreError(
                f"the soft-label store {self.path} does not exist (no such directory); generate "
                "it first (kdforge soft-labels) or fix the path"
            )
        data = _read_json(
            meta_path,
            "the soft-label store's meta file",
            "the store is unfinished or damaged: rerun the generation command (it resumes "
            "and writes meta.json at the end)",
        )
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise StoreError(f"{meta_path} is not the meta file of a kdforge soft-label store")
        if data.get("version") != FORMAT_VERSION:
            raise StoreError(
                f"{meta_path} has format version {data.get('version')!r}; this kdforge reads "
                f"version {FORMAT_VERSION}: regenerate the store or use a matching kdforge"
            )
        try:
            self.layout = StoreLayout.from_dict(data["layout"])
            self._plan = _Plan(self.layout, data["samples_per_shard"])
            shards = list(data["shards"])
        except KeyError as err:
            raise StoreError(f"{meta_path} lacks the key {err}; regenerate the store") from None
        except StoreError as err:
            raise StoreError(f"{meta_path}: {err}") from None
        self.meta: dict[str, Any] = data.get("meta", {})
        self.fingerprint = data.get("fingerprint")
        if len(shards) != self._plan.num_shards:
            raise StoreError(
                f"{meta_path} lists {len(shards)} shards but the layout needs "
                f"{self._plan.num_shards}; {_REGENERATE}"
            )
        self._files: list[Path] = []
        self._sha256: list[str] = []
        for shard_id, entry in enumerate(shards):
            try:
                file, digest = self.path / entry["file"], entry["sha256"]
                ok = entry["id"] == shard_id and list(entry["samples"]) == list(
                    self._plan.samples(shard_id)
                )
            except (KeyError, TypeError):
                ok = False
            if not ok:
                raise StoreError(
                    f"{meta_path}: the entry of shard {shard_id} is malformed; {_REGENERATE}"
                )
            expected = self._plan.num_bytes(shard_id)
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                raise StoreError(
                    f"shard {file} of the soft-label store is missing; {_REGENERATE}"
                ) from None
            if size != expected:
                raise StoreError(
                    f"shard {file} has {size} bytes but the layout needs {expected} "
                    f"({self._plan.num_records(shard_id)} records x {self.layout.bytes_per_view} "
                    f"bytes); the shard is truncated or damaged: {_REGENERATE}"
                )
            self._files.append(file)
            self._sha256.append(digest)
        self._maps: list[np.memmap | None] = [None] * len(self._files)
        self._tables: list[np.ndarray | None] = [None] * len(self._files)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._files)
        state["_tables"] = [None] * len(self._files)
        return state

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"SoftLabelStore({str(self.path)!r}, N={lay.num_samples}, V={lay.views_per_sample}, "
            f"K={lay.num_classes}, k={lay.top_k}, {lay.value_format}, {lay.view_kind}, "
            f"{lay.bytes_per_view} B/view)"
        )

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    @property
    def views_per_sample(self) -> int:
        return self.layout.views_per_sample

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def num_shards(self) -> int:
        return self._plan.num_shards

    @property
    def samples_per_shard(self) -> int:
        return self._plan.samples_per_shard

    def shard_files(self) -> list[Path]:
        return list(self._files)

    def _map(self, shard_id: int) -> np.memmap:
        mm = self._maps[shard_id]
        if mm is None:
            mm = np.memmap(
                self._files[shard_id],
                dtype=self.layout.record_dtype(),
                mode="r",
                shape=(self._plan.num_records(shard_id),),
            )
            self._maps[shard_id] = mm
        return mm

    def _table(self, shard_id: int) -> np.ndarray:
        """Shard ``shard_id`` as a read-only ``(records, bytes_per_view)`` uint8 array over
        its memory map (nothing is copied until rows are gathered)."""
        table = self._tables[shard_id]
        if table is None:
            flat = np.asarray(self._map(shard_id)).view(np.uint8)
            table = flat.reshape(-1, self.layout.bytes_per_view)
            self._tables[shard_id] = table
        return table

    def verify(self) -> None:
        """Check the sha256 of every shard; :class:`StoreError` names every failing shard."""
        bad = [
            f"{file} (sha256 {actual[:12]}..., recorded {digest[:12]}...)"
            for file, digest in zip(self._files, self._sha256, strict=True)
            if (actual := _sha256_file(file)) != digest
        ]
        if bad:
            raise StoreError(
                f"{len(bad)} shard(s) of the soft-label store {self.path} fail verification: "
                + "; ".join(bad)
                + f". The data is corrupt: {_REGENERATE}"
            )

    def raw(self, sample: Tensor | Sequence[int], view: Tensor | Sequence[int]) -> np.ndarray:
        """The undecoded records (structured array) of views ``view`` of samples ``sample``."""
        s, v = as_ids(sample), as_ids(view)
        if s.shape != v.shape:
            raise StoreError(
                f"sample and view must have the same length; got {s.shape} and {v.shape}"
            )
        lay = self.layout
        if s.size and (s.min() < 0 or s.max() >= lay.num_samples):
            raise StoreError(
                f"sample ids must lie in [0, {lay.num_samples}) for the store {self.path}; got "
                f"{s[(s < 0) | (s >= lay.num_samples)][:5].tolist()}"
            )
        if v.size and (v.min() < 0 or v.max() >= lay.views_per_sample):
            raise StoreError(
                f"view ids must lie in [0, {lay.views_per_sample}) for the store {self.path}; "
                f"got {v[(v < 0) | (v >= lay.views_per_sample)][:5].tolist()}"
            )
        shard = s // self.samples_per_shard
        rows = (s - shard * self.samples_per_shard) * lay.views_per_sample + v
        if self.num_shards == 1:  # the common small store: one gather, no masks
            return self._map(0)[rows]
        out = np.empty(s.shape[0], dtype=lay.record_dtype())
        for shard_id in np.unique(shard):
            where = shard == shard_id
            out[where] = self._map(int(shard_id))[rows[where]]
        return out

    def read(self, sample: Tensor | Sequence[int], view: Tensor | Sequence[int], *,
             checked: bool = False) -> StoreRecords:
        """Decoded records of view ``view[b]`` of sample ``sample[b]`` (``(B,)`` each).

        The same records as ``layout.decode(raw(sample, view))``, gathered from the memory
        map as bytes and decoded with numpy (this runs for every training batch). Ids may be
        tensors, arrays or sequences. ``checked=True`` skips the range check of the ids, for
        callers that drew them within range themselves.
        """
        s_np, v_np = as_ids(sample), as_ids(view)
        if s_np.shape != v_np.shape:
            raise StoreError(
                f"sample and view must have the same length; got {s_np.shape} and "
                f"{v_np.shape}"
            )
        lay = self.layout
        if s_np.size and not checked and (
                s_np.min() < 0 or s_np.max() >= lay.num_samples
                or v_np.min() < 0 or v_np.max() >= lay.views_per_sample):
            self.raw(s_np, v_np)  # raises the error naming the ids out of range
        per, views = self.samples_per_shard, lay.views_per_sample
        if self.num_shards == 1:
            rows = self._table(0)[s_np * views + v_np]
        else:
            shard = s_np // per
            offset = (s_np - shard * per) * views + v_np
            rows = np.empty((s_np.shape[0], lay.bytes_per_view), dtype=np.uint8)
            for shard_id in np.unique(shard).tolist():
                where = shard == shard_id
                rows[where] = self._table(shard_id)[offset[where]]
        return lay.decode_bytes(rows)

    def soft_targets(self, records: StoreRecords, T: float = 1.0, fill: str = "smooth") -> Tensor:
        """:func:`soft_targets` with this store's class count."""
        return soft_targets(records, self.num_classes, T=T, fill=fill)

    def log_probs(self, records: StoreRecords, T: float = 1.0, fill: str = "smooth") -> Tensor:
        """:func:`log_probs` with this store's class count."""
        return log_probs(records, self.num_classes, T=T, fill=fill)

    def dense_targets(self, records: StoreRecords,
                      fill: str = "smooth") -> tuple[Tensor, Tensor]:
        """:func:`dense_targets` with this store's class count."""
        return dense_targets(records, self.num_classes, fill)

    def view_seed(self, sample: Tensor, view: Tensor) -> Tensor:
        """:func:`view_seed` with the store seed recorded in the meta (``"store_seed"``)."""
        if "store_seed" not in self.meta:
            raise StoreError(
                f"the store {self.path} records no 'store_seed' in its meta, so noise seeds "
                "cannot be derived; regenerate it with a store seed"
            )
        return view_seed(int(self.meta["store_seed"]), sample, view)

    def check_compatible(
        self,
        num_samples: int | None = None,
        num_classes: int | None = None,
        teacher: Any = None,
        view: Any = None,
        dataset: Any = None,
    ) -> None:
        """Raise :class:`StoreError` if the store does not match the training run.

        Each argument that is given is compared with the store: ``num_samples`` and
        ``num_classes`` with the layout (and ``num_samples`` with ``meta["dataset"]["length"]``
        when recorded), ``teacher``, ``view`` and ``dataset`` with ``meta["teacher"]``,
        ``meta["view"]`` and ``meta["dataset"]`` (JSON values compared after a JSON round
        trip; a string ``dataset`` is compared with ``meta["dataset"]["name"]`` when the
        store records a dict). A value the store does not record cannot be checked and
        also raises.
        """
        where = self.path / META_FILE
        fix = f"regenerate the store for this run, or point the run at a matching store (not {self.path})"
        if num_samples is not None and int(num_samples) != self.layout.num_samples:
            raise StoreError(
                f"the data set has {int(num_samples)} samples but the store {where} was made "
                f"for {self.layout.num_samples}; {fix}"
            )
        if num_classes is not None and int(num_classes) != self.layout.num_classes:
            raise StoreError(
                f"the run has {int(num_classes)} classes but the store {where} holds "
                f"{self.layout.num_classes}; {fix}"
            )
        stored_ds = self.meta.get("dataset")
        if num_samples is not None and isinstance(stored_ds, dict) and "length" in stored_ds:
            if int(stored_ds["length"]) != int(num_samples):
                raise StoreError(
                    f"the data set has {int(num_samples)} samples but the store {where} records "
                    f"a data set of length {stored_ds['length']}; {fix}"
                )
        for key, value in (("teacher", teacher), ("view", view), ("dataset", dataset)):
            if value is None:
                continue
            if key not in self.meta:
                raise StoreError(
                    f"the store {where} records no {key!r} in its meta, so it cannot be checked "
                    f"against {value!r}; {fix}"
                )
            stored = self.meta[key]
            given = _normalise_meta({"v": value})["v"]
            if key == "dataset" and isinstance(given, str) and isinstance(stored, dict):
                stored = stored.get("name")
            if _canonical(given) != _canonical(stored):
                raise StoreError(
                    f"the run's {key} {_describe(given, stored)} does not match the store "
                    f"{where}; {fix}"
                )


def _describe(given: Any, stored: Any) -> str:
    """'X (store: Y)', naming only the differing keys when both are dicts."""
    if isinstance(given, dict) and isinstance(stored, dict):
        keys = sorted(
            k
            for k in set(given) | set(stored)
            if _canonical(given.get(k)) != _canonical(stored.get(k))
        )
        parts = [f"{k}={given.get(k)!r} (store: {stored.get(k)!r})" for k in keys]
        return "differs in " + ", ".join(parts)
    return f"{given!r} (store: {stored!r})"
