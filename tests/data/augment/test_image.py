"""Image crops and flips: bit-exact replay, distributions, the affine grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdforge.data.augment import (
    AugmentParams,
    ImageAugment,
    SignalAugment,
    crop_theta,
)
from tests.data.augment.helpers import gen, images, signals


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
