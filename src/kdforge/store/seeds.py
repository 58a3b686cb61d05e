"""Seeds of a store's views, and the views a run replays in each epoch.

Nothing random in a store depends on a generator's state: per-view noise seeds and the
uniforms of function-matching views are pure functions of (store seed, sample, view), and
the view each sample replays in an epoch is a pure function of (run seed, epoch). So
generation may be split over processes and shards in any way, and replay gives the same
views for any number of DataLoader workers, processes or a resume. The hashing is the
counter-based RNG of :mod:`kdforge.core.rng`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.core.rng import feistel31, hash32, round_keys, seeded_uniform

#: sample ids (and mixup partners) are uint32
MAX_SAMPLES = 2**32 - 1
#: view ids enter :func:`view_seed` as 30 bits
MAX_VIEWS = 2**30


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
    if bool(((sample < 0) | (sample > MAX_SAMPLES)).any()):
        raise StoreError(f"view_seed: sample ids must lie in [0, 2**32); got {sample.tolist()}")
    if bool(((view < 0) | (view >= MAX_VIEWS)).any()):
        raise StoreError(f"view_seed: view ids must lie in [0, 2**30); got {view.tolist()}")
    # 62-bit block sample << 30 | view, split into two 31-bit halves
    left = sample >> 1
    right = ((sample & 1) << 30) | view
    left, right = feistel31(left, right, round_keys(int(store_seed)))
    return (left << 31) | right


#: XORed into a view's seed before :func:`view_uniforms` hashes it, so a view's drawn
#: parameters and its noise (:func:`kdforge.core.rng.seeded_normal` of the plain seed)
#: come from different counter streams.
_DRAW_KEY = 0x1B873593_5BD1E995 & ((1 << 62) - 1)


def view_uniforms(store_seed: int, sample: Tensor, view: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 uniforms in (0, 1) of views ``(sample[b], view[b])``.

    A pure function of ``(store_seed, sample, view)``: :func:`view_seed` keyed apart from
    the noise stream, then :func:`kdforge.core.rng.seeded_uniform`. Stores whose view
    parameters must be known without the store (function matching: a view's crop is also
    its partners' view of it, and a CutMix box is not stored) draw them from these numbers,
    so any process regenerates the parameters of any view alone.
    """
    return seeded_uniform(view_seed(store_seed, sample, view) ^ _DRAW_KEY, n)


def _epoch_key(seed: int, epoch: int) -> int:
    """A 64-bit generator seed for the view draws of one epoch of a run."""
    seed &= 0xFFFFFFFFFFFFFFFF
    k0 = hash32((seed & 0xFFFFFFFF) ^ hash32((seed >> 32) ^ 0x85EBCA6B))
    k1 = hash32(k0 ^ hash32((int(epoch) & 0xFFFFFFFF) ^ 0xC2B2AE35))
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


__all__ = ["MAX_SAMPLES", "MAX_VIEWS", "epoch_views", "view_seed", "view_uniforms"]
