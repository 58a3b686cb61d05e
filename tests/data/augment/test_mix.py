"""Mixup and CutMix: replay, ratios, boxes, targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdforge.core.errors import ConfigError
from kdforge.data.augment import (
    ImageAugment,
    MixParams,
    Mixup,
    SignalAugment,
)
from tests.data.augment.helpers import gen, images, signals


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("make", [images, signals])
def test_mix_replay_and_pair_replay_are_bit_exact(mode: str, make) -> None:
    mix = Mixup(alpha=1.0, mode=mode)
    x = make()
    out, params = mix(x, gen(6))
    assert torch.equal(mix.apply(x, params), out)
    for i in range(len(x)):
        j = int(params.partner[i])
        one = mix.apply_pair(x[i : i + 1], x[j : j + 1], params.select(i))
        assert torch.equal(one, out[i : i + 1]), i
    stored = MixParams.from_dict(params.as_dict())
    assert torch.equal(mix.apply(x, stored), out)
    # selected rows keep their original partner positions: apply refuses, apply_pair works
    with pytest.raises(ConfigError, match="apply_pair"):
        mix.apply(x[:1], params.select(0))


def test_mixup_ratio_partner_and_targets() -> None:
    mix = Mixup(alpha=1.0)
    x = images(b=8)
    out, params = mix(x, gen(20))
    assert params.box is None
    assert torch.equal(params.partner, torch.roll(torch.arange(8), 1))
    assert params.partner[3] == 2 and params.partner[0] == 7
    assert (params.ratio == params.ratio[0]).all() and params.ratio[0] >= 0.5
    r = params.ratio[0]
    assert torch.allclose(out, r * x + (1 - r) * x[params.partner], atol=1e-6)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    soft = mix.mix_targets(y, params, num_classes=5)
    assert soft.shape == (8, 5) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(8), atol=1e-6)
    expected = r * F.one_hot(y, 5).float() + (1 - r) * F.one_hot(y[params.partner], 5).float()
    assert torch.allclose(soft, expected, atol=1e-7)
    assert soft[1, 1] == r and torch.isclose(soft[1, 0], 1 - r)
    # probabilities are mixed the same way
    probs = torch.softmax(torch.randn(8, 5, generator=gen(21)), 1)
    mixed = mix.mix_targets(probs, params, num_classes=5)
    assert torch.allclose(mixed, r * probs + (1 - r) * probs[params.partner], atol=1e-7)


@pytest.mark.parametrize("alpha", [1.0, 0.2, 2.0])
def test_mixup_ratio_distribution(alpha: float) -> None:
    mix = Mixup(alpha=alpha)
    g = gen(22)
    ratios = torch.tensor(
        [float(mix.sample(2, g).ratio[0]) for _ in range(3000)], dtype=torch.float64
    )
    assert (ratios >= 0.5).all() and (ratios <= 1.0).all()
    # (max(a, 1 - a) - 1/2)^2 = (a - 1/2)^2, whose mean is Var Beta(alpha, alpha)
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(float(((ratios - 0.5) ** 2).mean()) - variance) < 0.1 * variance
    if alpha == 1.0:  # folded uniform: uniform on [1/2, 1]
        assert abs(float(ratios.mean()) - 0.75) < 0.01


def test_cutmix_kept_area_matches_the_box() -> None:
    mix = Mixup(alpha=1.0, mode="cutmix")
    b, h, w = 6, 20, 16
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    for seed in range(25):
        out, params = mix(x, gen(seed))
        assert params.box.shape == (b, 4) and (params.box == params.box[0]).all()
        assert (params.ratio == params.ratio[0]).all() and params.ratio[0] >= 0.5
        top, left, bh, bw = params.box[0].tolist()
        assert top >= 0 and left >= 0 and top + bh <= 1 + 1e-6 and left + bw <= 1 + 1e-6
        assert math.isclose(float(params.ratio[0]), 1 - bh * bw, abs_tol=1e-6)
        from_partner = (out == x[params.partner]).all(1).double().mean((1, 2))
        kept = (out == x).all(1).double().mean((1, 2))
        assert torch.allclose(kept, params.ratio.double(), atol=1e-6)
        assert torch.allclose(from_partner, 1 - params.ratio.double(), atol=1e-6)
        y = torch.arange(b) % 3
        assert torch.allclose(mix.mix_targets(y, params, 3).sum(1), torch.ones(b), atol=1e-6)


def test_cutmix_on_signals_and_without_size() -> None:
    mix = Mixup(alpha=1.0, mode="cutmix")
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 1, 50).contiguous()
    out, params = mix(x, gen(23))
    assert params.box.shape == (4, 2)
    kept = (out == x).double().mean((1, 2))
    assert torch.allclose(kept, params.ratio.double(), atol=1e-6)
    assert math.isclose(float(params.ratio[0]), 1 - float(params.box[0, 1]), abs_tol=1e-6)
    # continuous box (no size): ratio is the box's area; apply rounds it to pixels
    loose = mix.sample(4, gen(23))
    assert loose.box.shape == (4, 4)
    assert math.isclose(
        float(loose.ratio[0]), 1 - float(loose.box[0, 2] * loose.box[0, 3]), abs_tol=1e-6
    )
    assert mix.apply(images(b=4, h=64, w=64), loose).shape == (4, 3, 64, 64)
    with pytest.raises(ConfigError, match=r"size=\(50,\)"):
        mix.apply(x, loose)


def test_from_uniforms_and_boxes_give_what_sample_draws() -> None:
    # the counter-based path of the soft-label store maps uniforms with the same math
    for aug in (ImageAugment(), SignalAugment(flip=0.5, noise_std=0.1)):
        drawn = aug.sample(16, gen(30))
        u = torch.rand((aug.num_uniforms, 16), generator=gen(30), dtype=torch.float64)
        mapped = aug.from_uniforms(u)
        assert torch.equal(mapped.crop, drawn.crop) and torch.equal(mapped.flip, drawn.flip)
        assert mapped.noise_seed is None
    with pytest.raises(ConfigError, match=r"\(5, B\)"):
        ImageAugment().from_uniforms(torch.rand(3, 4))
    mix = Mixup(alpha=1.0, mode="cutmix")
    for size in ((12, 10), (50,), None):
        params = mix.sample(3, gen(31), size=size)
        g = gen(31)
        a = float(torch.rand(1, generator=g, dtype=torch.float64))
        u = torch.rand((2, 1), generator=g, dtype=torch.float64)
        kept, box = Mixup.boxes(torch.tensor([max(a, 1 - a)], dtype=torch.float64), u, size)
        assert torch.equal(box[0], params.box[0]) and float(params.ratio[0]) == float(
            torch.tensor(float(kept[0]), dtype=torch.float32))
    ratio = 0.5 + 0.5 * torch.rand(6, generator=gen(32), dtype=torch.float64)
    u = torch.rand((2, 6), generator=gen(33), dtype=torch.float64)
    kept, box = Mixup.boxes(ratio, u, (12, 10))  # one box per row, each row alone
    for b in range(6):
        k1, b1 = Mixup.boxes(ratio[b : b + 1], u[:, b : b + 1], (12, 10))
        assert torch.equal(b1[0], box[b]) and k1[0] == kept[b]
