"""Signal windows, time reversal and counter-based noise."""

from __future__ import annotations

import math

import torch

from kdforge.data.augment import (
    AugmentParams,
    SignalAugment,
)
from tests.data.augment.helpers import gen, signals


def test_signal_replay_with_noise_is_bit_exact_per_sample() -> None:
    aug = SignalAugment(scale=(0.5, 1.0), flip=0.5, noise_std=0.3)
    x = signals(b=37)
    out, params = aug(x, gen(5))
    assert params.crop.shape == (37, 2) and params.noise_seed.dtype == torch.int64
    assert torch.equal(aug.apply(x, params), out)
    for i in range(len(x)):
        assert torch.equal(aug.apply(x[i : i + 1], params.select(i)), out[i : i + 1]), i
    again = AugmentParams.from_dict(params.select(torch.arange(10, 20)).as_dict())
    assert torch.equal(aug.apply(x[10:20], again), out[10:20])


def test_signal_windows_lie_inside_and_cover_scale() -> None:
    crop = SignalAugment(scale=(0.6, 1.0)).sample(20000, gen(14)).crop.double()
    start, length = crop.unbind(1)
    assert (start >= 0).all() and (start + length <= 1 + 1e-6).all()
    assert length.min() >= 0.6 - 1e-6 and length.max() <= 1.0 + 1e-6
    assert length.min() < 0.61 and length.max() > 0.99


def test_noise_statistics_and_seed_dependence() -> None:
    aug = SignalAugment(scale=(1.0, 1.0), noise_std=0.5)
    x = torch.zeros(500, 2, 40)
    out, params = aug(x, gen(19))
    assert abs(float(out.mean())) < 0.01
    assert abs(float(out.std()) - 0.5) < 0.01
    # noise of different samples is uncorrelated, and the same seed gives the same noise
    flat = out.view(500, -1)
    corr = torch.corrcoef(flat[:100])
    off = corr[~torch.eye(100, dtype=torch.bool)]
    assert abs(float(off.mean())) < 0.01  # sampling spread of a correlation over 80 values:
    assert abs(float(off.std()) * math.sqrt(80) - 1) < 0.1  # 1 / sqrt(80)
    other = aug.apply(
        x[:1], AugmentParams(crop=params.crop[:1], noise_seed=params.noise_seed[:1] + 1)
    )
    assert not torch.equal(other, out[:1])
    same = aug.apply(x[:1], AugmentParams(noise_seed=params.noise_seed[:1]))
    assert torch.equal(same, out[:1])
    # the noise level belongs to the augmentation: a recorded seed with noise_std=0 adds none
    assert torch.equal(SignalAugment(scale=(1.0, 1.0)).apply(x[:1], params.select(0)), x[:1])
