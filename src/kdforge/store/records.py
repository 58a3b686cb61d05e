"""Decoded records of a batch of views, and the ids that address them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdforge.data.augment import AugmentParams


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

    def _map(self, fn: Any) -> StoreRecords:
        return StoreRecords(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
                               for f in fields(self)})

    def to(self, device: torch.device | str) -> StoreRecords:
        """The records on ``device`` (these very records when they are there already)."""
        if self.indices.device == torch.device(device):
            return self
        return self._map(lambda t: t.to(device))

    def pin_memory(self) -> StoreRecords:
        """A copy in pinned memory (for a DataLoader with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def augment_params(self, noise_seed: Tensor | None = None) -> AugmentParams:
        """The crop and flip as :class:`kdforge.data.augment.AugmentParams` for replay.

        ``noise_seed`` (signals with noise): :func:`~kdforge.store.view_seed` of the same
        sample and view ids (or :meth:`~kdforge.store.SoftLabelStore.view_seed`).
        """
        return AugmentParams(crop=self.crop, flip=self.flip, noise_seed=noise_seed)


def as_ids(ids: Any) -> np.ndarray:
    """Sample or view ids (tensor, array or sequence) as a flat int64 numpy array (CPU)."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    if isinstance(ids, Tensor):
        return ids.detach().reshape(-1).to("cpu", torch.int64).numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


__all__ = ["StoreRecords", "as_ids"]
