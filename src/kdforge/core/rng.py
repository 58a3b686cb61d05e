"""Counter-based random numbers: 32-bit hashing, per-seed uniforms and normals, a Feistel
permutation.

Each number here is a pure function of a seed and a position, computed with vectorised
int64 tensor ops whose intermediate values stay below 2**49, so it is the same on every
device and one sample's numbers are regenerated alone, without replaying a generator.
The batched augmentations (:mod:`kdforge.data.augment`: per-sample signal noise) and the
soft-label store (:mod:`kdforge.store`: per-view seeds and uniforms, per-epoch view draws)
build on these functions.

* :func:`mix32`: a 32-bit bijection with good avalanche (the ``lowbias32`` hash of
  C. Wellons' hash-prospector), :func:`hash32` the same on a Python int;
* :func:`seeded_uniform`, :func:`seeded_normal`: ``(B, n)`` uniforms and Box-Muller
  normals from ``(B,)`` seeds;
* :func:`round_keys`, :func:`feistel31`: a keyed Feistel network (Luby & Rackoff, "How to
  construct pseudorandom permutations from pseudorandom functions", SIAM J. Comput. 1988)
  on pairs of 31-bit halves: a permutation, so distinct inputs never collide.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
MASK31 = 0x7FFFFFFF


def mul32(a: Tensor, constant: int) -> Tensor:
    """``(a * constant) mod 2**32`` for int64 ``a`` in [0, 2**32) without int64 overflow."""
    lo, hi = constant & 0xFFFF, constant >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer bijection with good avalanche (lowbias32), on int64 in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash32(x: int) -> int:
    """:func:`mix32` of the low 32 bits of a Python int (computed with the same tensor ops)."""
    return int(mix32(torch.tensor([x & MASK32], dtype=torch.int64))[0])


def seeded_uniform(seeds: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 uniforms in (0, 1): a pure function of each ``(seed, position)``.

    ``seeds`` is ``(B,)`` int64 (any value; its 64 bits are used). Row ``b`` depends only on
    ``seeds[b]``, so one sample's numbers are regenerated alone, on any device, with
    vectorised integer ops (every intermediate value stays in [0, 2**32)).
    """
    seeds = seeds.to(torch.int64)
    lo = seeds & MASK32
    hi = (seeds >> 32) & MASK32
    key = mix32(lo ^ mix32(hi ^ 0x243F6A88))
    counter = mix32(torch.arange(n, device=seeds.device, dtype=torch.int64))
    h = mix32(key[:, None] ^ counter[None, :])
    h = mix32((h + key[:, None]) & MASK32)
    return (h.to(torch.float64) + 0.5) * (1.0 / 2**32)


def seeded_normal(seeds: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 standard normal numbers from per-sample seeds (Box-Muller).

    Uses :func:`seeded_uniform` positions ``0..n-1`` for the radius and ``n..2n-1`` for the
    angle. Computed in float64 and meant to be rounded to the data's dtype, which hides the
    last-bit differences between vectorised and scalar ``log``/``cos`` on the CPU.
    """
    u = seeded_uniform(seeds, 2 * n)
    radius = torch.sqrt(torch.log(u[:, :n]) * -2.0)
    return radius * torch.cos(u[:, n:] * (2.0 * math.pi))


@functools.lru_cache(maxsize=64)
def round_keys(seed: int, rounds: int = 4) -> tuple[int, ...]:
    """The 32-bit round keys of :func:`feistel31` for one 64-bit ``seed`` (cached: a
    permutation is used with one seed many times, and each key costs a few tensor ops)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    key = hash32((seed & MASK32) ^ hash32((seed >> 32) ^ 0x9E3779B9))
    return tuple(hash32(key ^ (0x632BE5AB * (round_id + 1))) for round_id in range(rounds))


def feistel31(left: Tensor, right: Tensor, keys: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """A keyed Feistel permutation of pairs of 31-bit halves (int64 in [0, 2**31)).

    Round ``r``: ``(L, R) -> (R, L ^ F(R, k_r))`` with ``F(R, k) = mix32(mix32(R ^ k) ^ (k
    >> 3)) & (2**31 - 1)``. Every round is invertible, so the whole map is a bijection of
    the 62-bit block ``L * 2**31 + R``: distinct inputs give distinct outputs.
    """
    for key in keys:
        f = mix32(mix32(right ^ key) ^ (key >> 3)) & MASK31
        left, right = right, left ^ f
    return left, right


__all__ = ["MASK31", "MASK32", "feistel31", "hash32", "mix32", "mul32", "round_keys",
           "seeded_normal", "seeded_uniform"]
