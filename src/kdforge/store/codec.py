"""Records to bytes and back: encoding (with every field validated) and decoding.

:meth:`kdforge.store.StoreLayout.encode`, ``decode`` and ``decode_bytes`` call these
functions; the layout (see :mod:`kdforge.store.format`) says which fields a record has.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.store.quantize import (
    _check_ratio_range,
    _crop_codes,
    _crop_from_codes,
    _ratio_codes,
    _ratio_from_codes,
)
from kdforge.store.records import StoreRecords

if TYPE_CHECKING:
    from kdforge.store.format import StoreLayout

_GRID_TOLERANCE = 1e-3  # in units of the grid step: float32 rounding of j / 255 is ~1e-5
_POSITIVE_LOGP_TOLERANCE = 1e-5  # rounding of log_softmax may give tiny positive values


def _as_cpu(value: Any, name: str) -> Tensor:
    try:
        return torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise StoreError(f"{name} must be a tensor or array; got {type(value).__name__}") from err


def encode(layout: StoreLayout, indices: Tensor, logp: Tensor, crop: Tensor | None = None,
           flip: Tensor | None = None, partner: Tensor | None = None,
           ratio: Tensor | None = None) -> np.ndarray:
    """``n`` records of ``layout`` from tensors; see :meth:`StoreLayout.encode`."""
    indices, logp = _checked_labels(layout, indices, logp)
    out = layout.empty(indices.shape[0])
    out["indices"] = indices.numpy()
    if layout.value_format == "fp16":
        out["values"] = logp.numpy().astype(np.float16)
    else:
        q = np.rint(-logp.numpy() / layout.step)
        out["values"] = np.clip(q, 0, 255).astype(np.uint8)
    _encode_view(layout, out, crop, flip)
    _encode_mix(layout, out, partner, ratio)
    return out


def _checked_labels(layout: StoreLayout, indices: Tensor, logp: Tensor) -> tuple[Tensor, Tensor]:
    """The top-k classes (int64) and their log-probabilities (float64, clamped to
    ``[min_logp, 0]``), after checking shapes, ranges and distinctness."""
    k = layout.top_k
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
    if n and bool(((indices < 0) | (indices >= layout.num_classes)).any()):
        bad = indices[(indices < 0) | (indices >= layout.num_classes)][:5].tolist()
        raise StoreError(
            f"class indices must lie in [0, {layout.num_classes}) (num_classes); got {bad}"
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
    return indices, logp.clamp(min=layout.min_logp, max=0.0)


def _encode_view(layout: StoreLayout, out: np.ndarray, crop: Tensor | None,
                 flip: Tensor | None) -> None:
    """Fill the ``crop`` and ``flags`` fields of ``out`` (crops must lie on the grid)."""
    n = out.shape[0]
    if layout.view_kind == "none":
        if crop is not None or flip is not None:
            raise StoreError(
                "this store has view_kind='none': pass crop=None and flip=None, or make the "
                "store with view_kind='image' or 'signal'"
            )
        return
    if crop is None:
        raise StoreError(
            f"crop is required for view_kind={layout.view_kind!r}: pass the quantised "
            f"({layout.crop_size}-column) crop fractions of each view"
        )
    crop = _as_cpu(crop, "crop").to(torch.float64)
    if tuple(crop.shape) != (n, layout.crop_size):
        raise StoreError(
            f"crop must have shape ({n}, {layout.crop_size}) for view_kind="
            f"{layout.view_kind!r}; got {tuple(crop.shape)}"
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


def _encode_mix(layout: StoreLayout, out: np.ndarray, partner: Tensor | None,
                ratio: Tensor | None) -> None:
    """Fill the ``partner`` and ``ratio`` fields of ``out`` (``has_mix`` stores only)."""
    if not layout.has_mix:
        if partner is not None or ratio is not None:
            raise StoreError(
                "this store has has_mix=False: pass partner=None and ratio=None, or make the "
                "store with has_mix=True"
            )
        return
    n = out.shape[0]
    if partner is None or ratio is None:
        raise StoreError(
            "this store has has_mix=True: pass partner (sample ids) and ratio for every view"
        )
    partner = _as_cpu(partner, "partner")
    ratio = _as_cpu(ratio, "ratio").to(torch.float64)
    if tuple(partner.shape) != (n,) or tuple(ratio.shape) != (n,):
        raise StoreError(
            f"partner and ratio must have shape ({n},); got {tuple(partner.shape)} and "
            f"{tuple(ratio.shape)}"
        )
    partner = partner.to(torch.int64)
    if bool(((partner < 0) | (partner >= layout.num_samples)).any()):
        raise StoreError(
            f"mixup partners are sample ids in [0, {layout.num_samples}); got "
            f"{partner[(partner < 0) | (partner >= layout.num_samples)][:5].tolist()} "
            "(convert batch positions to sample ids first)"
        )
    _check_ratio_range(ratio)
    codes = _ratio_codes(ratio)
    if bool(((ratio - 0.5) * 510.0 - codes.to(torch.float64)).abs().gt(_GRID_TOLERANCE).any()):
        raise StoreError(
            "mixup ratios are not on the store's grid: call quantize_ratio before "
            "mixing and labelling"
        )
    out["partner"] = partner.numpy().astype(np.uint32)
    out["ratio"] = codes.numpy().astype(np.uint8)


def decode(layout: StoreLayout, records: np.ndarray) -> StoreRecords:
    """Records (a structured array of ``layout.record_dtype()``) as tensors."""
    indices = torch.from_numpy(records["indices"].astype(np.int64))
    values = records["values"]
    if layout.value_format == "fp16":
        logp = torch.from_numpy(values.astype(np.float32))
    else:
        logp = torch.from_numpy(values.astype(np.float32)) * float(-layout.step)
    crop = flip = partner = ratio = None
    if layout.view_kind != "none":
        crop = _crop_from_codes(torch.from_numpy(records["crop"].astype(np.int64)))
        flip = torch.from_numpy((records["flags"] & 1).astype(bool))
    if layout.has_mix:
        partner = torch.from_numpy(records["partner"].astype(np.int64))
        ratio = _ratio_from_codes(torch.from_numpy(records["ratio"].astype(np.int64)))
    return StoreRecords(indices, logp, crop, flip, partner, ratio)


def decode_bytes(layout: StoreLayout, rows: np.ndarray) -> StoreRecords:
    """:func:`decode` of records given as a ``(B, bytes_per_view)`` uint8 array (the
    training path: numpy views of the gathered bytes; the same tensors, bit for bit)."""
    offsets = _field_offsets(layout)

    def field(name: str, dtype: str) -> np.ndarray:
        start, size = offsets[name]
        part = rows[:, start:start + size]
        return part if dtype == "u1" else np.ascontiguousarray(part).view(dtype)

    k = layout.top_k
    indices = field("indices", "<u4" if layout.index_dtype == "uint32" else "<u2")
    if layout.value_format == "fp16":
        logp = field("values", "<f2").astype(np.float32)
    else:
        logp = field("values", "u1").astype(np.float32) * np.float32(-layout.step)
    crop = flip = partner = ratio = None
    if layout.view_kind != "none":
        crop = _crop_from_codes(field("crop", "u1"))
        flip = torch.from_numpy((field("flags", "u1")[:, 0] & 1).astype(bool))
    if layout.has_mix:
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


__all__ = ["decode", "decode_bytes", "encode"]
