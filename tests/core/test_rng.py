"""The counter-based RNG of kdforge.core.rng: hashing, per-seed numbers, the Feistel permutation."""

from __future__ import annotations

import math

import torch

from kdforge.core.rng import (
    feistel31,
    hash32,
    mix32,
    mul32,
    round_keys,
    seeded_normal,
    seeded_uniform,
)


def test_mul32_and_mix32_are_exact_32_bit_arithmetic() -> None:
    a = torch.randint(0, 2**32, (1000,), generator=torch.Generator().manual_seed(0))
    for constant in (0x7FEB352D, 0x846CA68B, 1, 0xFFFFFFFF):
        expected = [(int(v) * constant) % 2**32 for v in a]
        assert mul32(a, constant).tolist() == expected
    x = torch.arange(1 << 16, dtype=torch.int64) * 65537  # spread over [0, 2**32)
    h = mix32(x)
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    assert torch.unique(h).numel() == x.numel()  # a bijection: no collisions
    assert hash32(12345) == int(mix32(torch.tensor([12345]))[0])
    assert hash32(-1) == hash32(2**32 - 1)  # the low 32 bits of the int


def test_feistel31_is_a_permutation_with_keys_of_the_seed() -> None:
    keys = round_keys(7)
    assert len(keys) == 4 and keys == round_keys(7) and keys != round_keys(8)
    assert all(0 <= k < 2**32 for k in keys)
    left = torch.arange(64).repeat_interleave(64)
    right = torch.arange(64).repeat(64)
    out_l, out_r = feistel31(left, right, keys)
    blocks = out_l * 2**31 + out_r
    assert torch.unique(blocks).numel() == 64 * 64
    assert int(out_l.max()) < 2**31 and int(out_r.max()) < 2**31 and int(blocks.min()) >= 0


def test_seeded_uniform_and_normal() -> None:
    seeds = torch.tensor([0, 1, 2**40 + 1, -5, 2**62 - 1])
    u = seeded_uniform(seeds, 4000)
    assert u.shape == (5, 4000) and u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()
    assert torch.allclose(u.mean(1), torch.full((5,), 0.5, dtype=torch.float64), atol=0.02)
    assert len({tuple(row[:8].tolist()) for row in u}) == 5  # all seeds differ
    assert torch.equal(seeded_uniform(seeds[2:3], 4000), u[2:3])
    # consecutive seeds (as a counter would hand out) give uncorrelated streams
    v = seeded_normal(torch.arange(1000, 1040), 4000).float()
    corr = torch.corrcoef(v)[~torch.eye(40, dtype=torch.bool)]
    assert corr.abs().max() < 5 / math.sqrt(4000)
    z = seeded_normal(torch.arange(200), 500)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z.abs() < 1).double().mean()) - 0.6827) < 0.01
