"""Small seeded batches for the augmentation tests."""

from __future__ import annotations

import torch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 16, c: int = 3, h: int = 12, w: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=gen(seed))


def signals(b: int = 16, c: int = 2, n: int = 40, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, c, n, generator=gen(seed))
