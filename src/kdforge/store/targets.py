"""Soft targets from stored top-k log-probabilities: the filled T = 1 distribution and its
tempered forms.

FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV
2022) stores the teacher's top-k and fills the missing probability mass evenly over the
other classes ("marginal smoothing", ``fill="smooth"``); ``fill="renorm"`` renormalises the
top-k instead. The temperature is a training-time choice: the store holds log-probabilities
at T = 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.store.format import FILL_MODES
from kdforge.store.records import StoreRecords

_LOG_FLOOR = math.log(float(torch.finfo(torch.float32).tiny))  # about -87.3


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


__all__ = ["dense_arrays", "dense_targets", "log_probs", "soft_targets"]
