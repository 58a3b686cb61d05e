"""The grids of crops and ratios, per-view seeds and uniforms (kdforge.store.quantize, .seeds)."""

import math

import pytest
import torch

from kdforge.core.rng import seeded_uniform
from kdforge.data.augment import Mixup
from kdforge.store import (
    StoreError,
    epoch_views,
    quantize_crop,
    quantize_ratio,
    ratio_code_cdf,
    ratio_from_uniform,
    view_seed,
    view_uniforms,
)


def test_quantize_crop_and_ratio_are_idempotent_and_on_the_grid():
    gen = torch.Generator().manual_seed(1)
    length = 0.1 + 0.9 * torch.rand(500, 2, generator=gen)
    crop = torch.cat([torch.rand(500, 2, generator=gen) * (1 - length), length], dim=1)
    q = quantize_crop(crop)
    assert q.dtype == torch.float32
    assert torch.equal(quantize_crop(q), q)
    codes = q.double() * 255
    assert (codes - codes.round()).abs().max() < 1e-4
    # starts round to the nearest step; a length moves by at most one step (a minimum of
    # one step, or pulled back so the box ends inside the input)
    assert (q[:, :2] - crop[:, :2]).abs().max() <= 0.5 / 255 + 1e-6
    assert (q[:, 2:] - crop[:, 2:]).abs().max() <= 1 / 255 + 1e-6
    assert (q[:, :2] + q[:, 2:]).max() <= 1.0 + 1e-6 and q[:, 2:].min() >= 1 / 255 - 1e-7
    # a box that rounding would push past the edge is pulled back inside
    edge = quantize_crop(torch.tensor([[10.5 / 255, 0.0, 244.5 / 255, 1.0]]))
    assert edge[0, 0] + edge[0, 2] <= 1.0 + 1e-6
    tiny = quantize_crop(torch.tensor([[0.5, 0.001]]))  # a length of at least one step
    assert tiny[0, 1] == pytest.approx(1 / 255)
    signal = quantize_crop(torch.tensor([[0.3, 0.5]]))
    assert torch.equal(quantize_crop(signal), signal)

    ratio = 0.5 + 0.5 * torch.rand(500, generator=torch.Generator().manual_seed(2))
    r = quantize_ratio(ratio)
    assert torch.equal(quantize_ratio(r), r)
    assert (r - ratio).abs().max() <= 0.5 / 510 + 1e-6
    assert r.min() >= 0.5 and r.max() <= 1.0
    assert quantize_ratio(torch.tensor([0.5, 1.0])).tolist() == [0.5, 1.0]
    with pytest.raises(StoreError, match=r"\[0.5, 1\]"):
        quantize_ratio(torch.tensor([0.3]))


def test_view_seed_is_deterministic_distinct_and_in_range():
    sample = torch.arange(2000).repeat_interleave(8)
    view = torch.arange(8).repeat(2000)
    a = view_seed(123, sample, view)
    assert a.dtype == torch.int64
    assert torch.equal(a, view_seed(123, sample, view))
    assert torch.unique(a).numel() == a.numel()
    assert a.min() >= 0 and a.max() < 2**62
    b = view_seed(124, sample, view)
    assert (a != b).float().mean() > 0.99
    big = view_seed(2**40 + 5, torch.tensor([2**32 - 1, 0]), torch.tensor([2**30 - 1, 0]))
    assert big.min() >= 0 and big.max() < 2**62 and big[0] != big[1]
    # one sample alone gives its batch value
    assert view_seed(123, sample[17:18], view[17:18]) == a[17]
    with pytest.raises(StoreError, match="2\\*\\*30"):
        view_seed(1, torch.tensor([0]), torch.tensor([2**30]))


def folded_cdf_closed_form(alpha, x):
    """P(max(a, 1 - a) <= x), a ~ Beta(alpha, alpha), from I_y(alpha, alpha) in closed form."""
    y = 1.0 - x
    regularized = {1.0: y, 2.0: 3 * y**2 - 2 * y**3, 0.5: 2 / math.pi * torch.asin(y.sqrt())}
    return 1.0 - 2.0 * regularized[alpha]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_ratios_drawn_by_inversion_have_the_law_of_the_quantised_folded_beta(alpha):
    x = torch.linspace(0.5, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(Mixup(alpha).folded_cdf(x), folded_cdf_closed_form(alpha, x),
                          atol=1e-12)
    table = ratio_code_cdf(Mixup(alpha).folded_cdf)
    # code j takes the ratios that round to (255 + j) / 510: upper edge (255.5 + j) / 510
    edges = (torch.arange(255, dtype=torch.float64) + 255.5) / 510
    assert torch.allclose(table, folded_cdf_closed_form(alpha, edges), atol=1e-12)
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000  # a fine grid of quantiles
    r = ratio_from_uniform(u, table)
    assert r.dtype == torch.float32 and torch.equal(quantize_ratio(r), r)
    counts = torch.bincount(torch.round((r.double() - 0.5) * 510).long(), minlength=256)
    probs = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), table,
                                  torch.ones(1, dtype=torch.float64)]))
    assert (counts / 20000 - probs).abs().max() <= 1 / 20000 + 1e-12
    assert torch.all(r[1:] >= r[:-1])  # inversion: monotone in u


def test_view_uniforms_are_pure_and_apart_from_the_noise_stream():
    sample, view = torch.arange(50).repeat_interleave(4), torch.arange(4).repeat(50)
    u = view_uniforms(7, sample, view, 9)
    assert u.shape == (200, 9) and u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert torch.equal(view_uniforms(7, sample[33:34], view[33:34], 9), u[33:34])
    noise = seeded_uniform(view_seed(7, sample, view), 9)  # what seeded_normal starts from
    assert (u != noise).all()
    assert (view_uniforms(8, sample, view, 9) != u).float().mean() > 0.99


def test_epoch_views_are_a_pure_function_of_seed_and_epoch():
    a = epoch_views(7, 3, 100, 2, 50)
    assert a.shape == (100, 2) and a.dtype == torch.int32
    assert torch.equal(a, epoch_views(7, 3, 100, 2, 50))
    assert int(a.min()) >= 0 and int(a.max()) < 50 and len(a.unique()) > 40
    assert not torch.equal(a, epoch_views(7, 4, 100, 2, 50))  # a new draw every epoch
    assert not torch.equal(a, epoch_views(8, 3, 100, 2, 50))  # and for every run seed
