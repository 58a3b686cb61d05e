"""Soft targets from stored top-k log-probabilities (kdforge.store.targets)."""

import math

import pytest
import torch

from kdforge.store import StoreError, StoreRecords, dense_targets, log_probs, soft_targets


def hand_records():
    # two rows, K = 6, k = 3; row 0 misses 0.3 of the mass, row 1 misses nothing
    p = torch.tensor([[0.5, 0.15, 0.05], [0.6, 0.3, 0.1]])
    return StoreRecords(indices=torch.tensor([[2, 0, 5], [1, 3, 4]]), logp=p.log()), p


def test_soft_targets_smooth_and_renorm():
    rec, p = hand_records()
    smooth = soft_targets(rec, 6, fill="smooth")
    assert smooth.shape == (2, 6)
    assert torch.allclose(smooth.sum(1), torch.ones(2))
    assert torch.allclose(smooth[0, [2, 0, 5]], p[0])
    assert torch.allclose(smooth[0, [1, 3, 4]], torch.full((3,), 0.1))  # 0.3 / (6 - 3)
    assert torch.allclose(smooth[1, [1, 3, 4]], p[1])
    assert torch.equal(smooth[1, [0, 2, 5]], torch.zeros(3))
    renorm = soft_targets(rec, 6, fill="renorm")
    assert torch.allclose(renorm[0, [2, 0, 5]], p[0] / 0.7)
    assert torch.equal(renorm[0, [1, 3, 4]], torch.zeros(3))
    assert torch.allclose(renorm.sum(1), torch.ones(2))
    lp = log_probs(rec, 6)
    assert torch.allclose(lp.exp(), smooth, atol=1e-6)
    assert torch.isfinite(lp).all() and lp.min() >= -88
    with pytest.raises(StoreError, match="fill"):
        soft_targets(rec, 6, fill="zero")
    with pytest.raises(StoreError, match="num_classes"):
        soft_targets(rec, 5)


@pytest.mark.parametrize("fill", ["smooth", "renorm"])
def test_dense_targets_equal_the_softmax_of_the_filled_logits(fill):
    # closed form at T = 1 == softmax of the filled log-weights (the definition), also for a
    # row whose quantised top-k mass exceeds 1 and for K == k (nothing to fill)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen) * 3
    values, indices = torch.log_softmax(logits, -1).topk(4, -1)
    values[0] = torch.tensor([0.6, 0.3, 0.2, 0.1]).log()  # sums to 1.2
    rec = StoreRecords(indices=indices, logp=values)
    log_q, q = dense_targets(rec, 10, fill)
    weights = torch.full((64, 10), -math.inf)
    if fill == "smooth":
        missing = (1 - values.exp().sum(1, keepdim=True)).clamp(min=0)
        weights = (missing / 6).log().expand(64, 10).clone()
    expected = torch.softmax(weights.scatter(1, indices, values), -1)
    assert torch.allclose(q, expected, atol=1e-6) and torch.allclose(q.sum(1), torch.ones(64))
    assert torch.allclose(log_q.exp(), q, atol=1e-7) and log_q.min() >= -88
    assert torch.equal(log_q, log_probs(rec, 10, fill=fill))
    assert torch.equal(q, soft_targets(rec, 10, fill=fill))
    full = StoreRecords(indices=torch.tensor([[1, 0]]), logp=torch.tensor([[0.7, 0.2]]).log())
    assert torch.allclose(dense_targets(full, 2, fill)[1], torch.tensor([[2 / 9, 7 / 9]]))


def test_soft_targets_temperature():
    rec, p = hand_records()
    T = 4.0
    full = soft_targets(rec, 6)  # T = 1
    expected = full ** (1 / T)
    expected = expected / expected.sum(1, keepdim=True)
    hot = soft_targets(rec, 6, T=T)
    assert torch.allclose(hot, expected, atol=1e-6)
    assert torch.allclose(hot[0, [1, 3, 4]], hot[0, 1].expand(3))  # the fill stays equal
    # flatter than T = 1: higher entropy
    ent = lambda q: -(q.clamp_min(1e-30).log() * q).sum(1)  # noqa: E731
    assert (ent(hot) > ent(full)).all()
    renorm = soft_targets(rec, 6, T=T, fill="renorm")
    top = p ** (1 / T)
    assert torch.allclose(renorm[0, [2, 0, 5]], top[0] / top[0].sum(), atol=1e-6)
    assert torch.allclose(log_probs(rec, 6, T=T).exp(), hot, atol=1e-6)
    with pytest.raises(StoreError, match="temperature"):
        soft_targets(rec, 6, T=0)
