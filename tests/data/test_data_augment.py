"""Batched augmentations: recorded parameters, bit-exact replay, distributions, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdforge.core.errors import ConfigError
from kdforge.data.augment import (
    AugmentParams,
    ImageAugment,
    MixParams,
    Mixup,
    SignalAugment,
    crop_theta,
    make_augment,
    seeded_normal,
    seeded_uniform,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 16, c: int = 3, h: int = 12, w: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=gen(seed))


def signals(b: int = 16, c: int = 2, n: int = 40, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, c, n, generator=gen(seed))


# --- replay ----------------------------------------------------------------------------------


def test_image_replay_is_bit_exact_and_survives_storage() -> None:
    aug = ImageAugment()
    x = images()
    out, params = aug(x, gen(3))
    assert out.shape == x.shape and params.crop.shape == (16, 4) and params.flip.shape == (16,)
    assert params.crop.dtype == torch.float32 and params.flip.dtype == torch.bool
    assert params.noise_seed is None
    assert torch.equal(aug.apply(x, params), out)
    stored = {k: v.numpy() for k, v in params.as_dict().items()}
    assert set(stored) == {"crop", "flip"}
    assert torch.equal(aug.apply(x, AugmentParams.from_dict(stored)), out)


def test_image_per_sample_replay_is_bit_exact() -> None:
    aug = ImageAugment(flip=0.5)
    x = images(b=48, h=17, w=23)
    out, params = aug(x, gen(4))
    for i in range(len(x)):
        assert torch.equal(aug.apply(x[i : i + 1], params.select(i)), out[i : i + 1]), i
    idx = torch.tensor([5, 0, 33])
    assert torch.equal(aug.apply(x[idx], params.select(idx)), out[idx])


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


def test_same_seed_same_params_and_different_seed_different() -> None:
    for aug in (ImageAugment(), SignalAugment(flip=0.5, noise_std=0.1)):
        a, b, c = aug.sample(64, gen(7)), aug.sample(64, gen(7)), aug.sample(64, gen(8))
        for name, value in a.as_dict().items():
            assert torch.equal(value, b.as_dict()[name])
            assert not torch.equal(value, c.as_dict()[name])
    mix = Mixup(mode="cutmix")
    a, b, c = (mix.sample(8, g, size=(32, 32)) for g in (gen(7), gen(7), gen(8)))
    assert torch.equal(a.ratio, b.ratio) and torch.equal(a.box, b.box)
    assert not torch.equal(a.ratio, c.ratio)


def test_params_land_on_requested_device_and_generator_is_advanced() -> None:
    g = gen(9)
    first = ImageAugment().sample(4, g, "cpu")
    second = ImageAugment().sample(4, g, torch.device("cpu"))
    assert first.crop.device.type == "cpu" and not torch.equal(first.crop, second.crop)


# --- crop and flip distributions ----------------------------------------------------------


@pytest.mark.parametrize("scale", [(0.05, 1.0), (0.9, 1.0), (0.3, 0.3)])
def test_crops_lie_inside_and_area_fractions_cover_scale(scale: tuple[float, float]) -> None:
    lo, hi = scale
    crop = ImageAugment(scale=scale).sample(20000, gen(10)).crop.double()
    top, left, h, w = crop.unbind(1)
    eps = 1e-6
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= 1 + eps).all() and (left + w <= 1 + eps).all()
    area = h * w
    assert (area >= lo - eps).all() and (area <= hi + eps).all()
    if hi > lo:  # uniform over the whole range: extremes reached, quarters equally filled
        assert area.min() < lo + 0.01 * (hi - lo) and area.max() > hi - 0.01 * (hi - lo)
        quarter = ((area - lo) / (hi - lo) * 4).clamp(max=3.999).floor()
        counts = torch.bincount(quarter.long(), minlength=4).double() / len(area)
        assert torch.allclose(counts, torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)
        # boxes move over the whole image
        assert top.min() < 0.01 and left.min() < 0.01 and (top + h).max() > 0.99


def test_aspect_ratio_is_log_uniform_in_range_where_unclipped() -> None:
    crop = ImageAugment(scale=(0.05, 0.3), ratio=(0.5, 2.0)).sample(20000, gen(11)).crop.double()
    aspect = crop[:, 3] / crop[:, 2]  # no box can be clipped: sqrt(0.3 * 2) < 1
    assert aspect.min() >= 0.5 - 1e-5 and aspect.max() <= 2.0 + 1e-5
    log_aspect = aspect.log()
    assert abs(float(log_aspect.mean())) < 0.02  # symmetric around ratio 1 in log space
    assert abs(float((log_aspect < 0).double().mean()) - 0.5) < 0.02


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_frequency(p: float) -> None:
    image_flips = ImageAugment(flip=p).sample(20000, gen(12)).flip
    signal_flips = SignalAugment(flip=p).sample(20000, gen(13)).flip
    for flips in (image_flips, signal_flips):
        rate = float(flips.double().mean())
        if p in (0.0, 1.0):
            assert rate == p
        else:
            assert abs(rate - p) < 0.015


def test_signal_windows_lie_inside_and_cover_scale() -> None:
    crop = SignalAugment(scale=(0.6, 1.0)).sample(20000, gen(14)).crop.double()
    start, length = crop.unbind(1)
    assert (start >= 0).all() and (start + length <= 1 + 1e-6).all()
    assert length.min() >= 0.6 - 1e-6 and length.max() <= 1.0 + 1e-6
    assert length.min() < 0.61 and length.max() > 0.99


# --- what the crop computes ----------------------------------------------------------------


def test_identity_params_reproduce_the_input() -> None:
    x = images(b=4, h=9, w=14)
    out = ImageAugment().apply(x, AugmentParams.identity(4, rank=2))
    assert torch.allclose(out, x, atol=1e-5)
    s = signals(b=4, n=33)
    assert torch.allclose(
        SignalAugment(noise_std=1.0).apply(s, AugmentParams.identity(4, 1)), s, atol=1e-5
    )
    assert torch.allclose(ImageAugment().apply(x, AugmentParams()), x, atol=1e-5)


def test_flip_of_the_whole_image_mirrors_it() -> None:
    x = images(b=3, h=8, w=11)
    params = AugmentParams.identity(3)
    params.flip[:] = True
    assert torch.allclose(ImageAugment().apply(x, params), x.flip(-1), atol=1e-5)
    s = signals(b=3, n=21)
    sp = AugmentParams.identity(3, rank=1)
    sp.flip[:] = True
    assert torch.allclose(SignalAugment().apply(s, sp), s.flip(-1), atol=1e-5)


def test_known_box_equals_slice_and_interpolate() -> None:
    # An image whose pixels outside the top-left quarter replicate that quarter's edge: the
    # bilinear resample of the box then sees the same neighbours as F.interpolate on the
    # slice (which clamps at the slice's border), so the two agree everywhere.
    quarter = torch.randn(2, 3, 4, 5, generator=gen(15))
    x = F.pad(quarter, (0, 5, 0, 4), mode="replicate")  # (2, 3, 8, 10)
    params = AugmentParams(
        crop=torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2), flip=torch.tensor([False, True])
    )
    out = ImageAugment().apply(x, params)
    expected = F.interpolate(quarter, size=(8, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(out[0], expected[0], atol=1e-6)
    assert torch.allclose(out[1], expected[1].flip(-1), atol=1e-6)
    # same for a window of a signal
    half = torch.randn(2, 1, 10, generator=gen(16))
    s = F.pad(half, (0, 10), mode="replicate")
    sp = AugmentParams(crop=torch.tensor([[0.0, 0.5]] * 2))
    expected = F.interpolate(half, size=20, mode="linear", align_corners=False)
    assert torch.allclose(SignalAugment().apply(s, sp), expected, atol=1e-6)


def test_grid_matches_affine_grid_of_the_same_matrix() -> None:
    x = images(b=32, h=15, w=19)
    params = ImageAugment().sample(32, gen(17))
    theta = crop_theta(params.crop, params.flip)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    reference = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(ImageAugment().apply(x, params), reference, atol=1e-5)


def test_center_view() -> None:
    x = images(b=2, h=8, w=8)
    assert ImageAugment().center(x) is x
    s = signals(b=2)
    assert SignalAugment(noise_std=1.0).center(s) is s
    half = ImageAugment(center_crop=0.5).center(x)
    box = AugmentParams(crop=torch.tensor([[0.25, 0.25, 0.5, 0.5]] * 2))
    assert torch.equal(half, ImageAugment().apply(x, box))
    quarter = x[:, :, 2:6, 2:6]
    expected = F.interpolate(quarter, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(half[:, :, 2:6, 2:6], expected[:, :, 2:6, 2:6], atol=1e-6)
    window = SignalAugment(center_crop=0.5).center(s)
    assert window.shape == s.shape and not torch.equal(window, s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_kept(dtype: torch.dtype) -> None:
    g = gen(18)
    for aug, x in ((ImageAugment(), images()), (SignalAugment(noise_std=0.5), signals())):
        out, params = aug(x.to(dtype), g)
        assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
        assert params.crop.dtype == torch.float32
    for mode in ("mixup", "cutmix"):
        out, _ = Mixup(mode=mode)(images().to(dtype), g)
        assert out.dtype == dtype


# --- noise ----------------------------------------------------------------------------------


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


# --- mixup and cutmix -----------------------------------------------------------------------


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


# --- parameter containers --------------------------------------------------------------------


def test_params_helpers() -> None:
    p = SignalAugment(noise_std=0.1).sample(5, gen(24))
    q = SignalAugment(noise_std=0.1).sample(3, gen(25))
    both = AugmentParams.cat([p, q])
    assert len(both) == 8 and torch.equal(both.select(torch.arange(5, 8)).noise_seed, q.noise_seed)
    assert len(p.select(2)) == 1 and len(p.select(slice(1, 4))) == 3
    assert len(p.select(torch.tensor([True, False, True, False, False]))) == 2
    assert len(AugmentParams()) == 0
    with pytest.raises(ConfigError, match="noise_seed"):
        AugmentParams.cat([p, SignalAugment().sample(2, gen(0))])
    with pytest.raises(ConfigError, match="empty"):
        AugmentParams.cat([])
    with pytest.raises(ConfigError, match="unknown keys.*box"):
        AugmentParams.from_dict({"box": torch.zeros(2, 4)})
    with pytest.raises(ConfigError, match="batch size"):
        AugmentParams(crop=torch.zeros(3, 4), flip=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"\(B, 4\)"):
        AugmentParams(crop=torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="partner is required"):
        MixParams(ratio=torch.ones(2))
    m = Mixup().sample(4, gen(26))
    assert len(MixParams.cat([m, m])) == 8 and len(m.to("cpu")) == 4
    restored = MixParams.from_dict({k: v.tolist() for k, v in m.as_dict().items()})
    assert restored.partner.dtype == torch.int64 and torch.equal(restored.ratio, m.ratio)


def test_apply_rejects_mismatched_params_and_inputs() -> None:
    aug = ImageAugment()
    x = images(b=4)
    with pytest.raises(ConfigError, match="4 rows but the batch has 3"):
        aug.apply(x[:3], aug.sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, 4\) crop"):
        aug.apply(x, SignalAugment().sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, 2\) windows"):
        SignalAugment().apply(signals(b=4), aug.sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\).*\(4, 2, 40\)"):
        aug(signals(b=4), gen(0))
    with pytest.raises(ConfigError, match="floating-point"):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), gen(0))
    with pytest.raises(ConfigError, match="same shape"):
        Mixup().apply_pair(x, x[:2], Mixup().sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        Mixup().mix_targets(torch.tensor([0, 1, 2, 3]), Mixup().sample(4, gen(0)), 3)


# --- options and errors ------------------------------------------------------------------------


def test_make_augment_picks_by_rank_and_checks_options() -> None:
    image = make_augment((3, 32, 32), scale=(0.2, 1.0), flip=0.0)
    assert isinstance(image, ImageAugment) and image.scale == (0.2, 1.0) and image.flip == 0.0
    signal = make_augment((1, 40), noise_std=0.1)
    assert isinstance(signal, SignalAugment) and signal.noise_std == 0.1
    assert image.config()["scale"] == [0.2, 1.0] and "SignalAugment(" in repr(signal)
    with pytest.raises(ConfigError, match=r"\(1, 2, 3, 4\).*\(C, H, W\).*\(C, L\)"):
        make_augment((1, 2, 3, 4))
    with pytest.raises(ConfigError, match=r"\(40,\)"):
        make_augment((40,))
    with pytest.raises(ConfigError, match="'noise_std'.*allowed options: scale, ratio, flip"):
        make_augment((3, 8, 8), noise_std=0.1)
    with pytest.raises(ConfigError, match="'ratio'.*allowed options: scale, flip, noise_std"):
        make_augment((1, 40), ratio=(0.5, 2.0))


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: ImageAugment(scale=(0.0, 1.0)), r"scale.*0 < lo <= hi <= 1.*\(0\.0, 1\.0\)"),
        (lambda: ImageAugment(scale=(0.6, 0.2)), r"scale.*0 < lo <= hi <= 1.*\(0\.6, 0\.2\)"),
        (lambda: SignalAugment(scale=(0.5, 1.5)), r"scale.*0 < lo <= hi <= 1.*1\.5"),
        (lambda: ImageAugment(scale=0.5), r"scale must be a pair.*0\.5"),
        (lambda: ImageAugment(ratio=(0.0, 1.0)), r"ratio.*0 < lo <= hi.*\(0\.0, 1\.0\)"),
        (lambda: ImageAugment(ratio=(2.0, 1.0)), r"ratio.*0 < lo <= hi.*\(2\.0, 1\.0\)"),
        (lambda: ImageAugment(flip=1.5), r"flip.*\[0, 1\].*1\.5"),
        (lambda: SignalAugment(flip=-0.1), r"flip.*\[0, 1\].*-0\.1"),
        (lambda: SignalAugment(noise_std=-1.0), r"noise_std.*>= 0.*-1\.0"),
        (lambda: ImageAugment(center_crop=0.0), r"center_crop.*\(0, 1\].*0\.0"),
        (lambda: Mixup(alpha=0.0), r"alpha.*> 0.*0\.0"),
        (lambda: Mixup(alpha=-1.0), r"alpha.*> 0.*-1\.0"),
        (lambda: Mixup(mode="mixer"), r"'mixer'.*'mixup', 'cutmix'"),
    ],
)
def test_bad_options_raise_config_error(build, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build()
