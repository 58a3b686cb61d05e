import json
import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from kdforge.core.errors import ConfigError, KDForgeError
from kdforge.data.augment import ImageAugment, Mixup, SignalAugment, seeded_uniform
from kdforge.teachers.store import (
    SoftLabelStore,
    SoftLabelStoreWriter,
    StoreError,
    StoreLayout,
    StoreRecords,
    dense_targets,
    log_probs,
    quantize_crop,
    quantize_ratio,
    ratio_code_cdf,
    ratio_from_uniform,
    soft_targets,
    view_seed,
    view_uniforms,
)
from kdforge.teachers.stored import MixedViews

META = {
    "teacher": {"name": "resnet18", "sha256": "abc123"},
    "dataset": {"name": "tiny", "length": 10},
    "view": {"scale": [0.08, 1.0], "flip": 0.5},
    "store_seed": 7,
}


def random_views(layout, n, gen):
    """Random top-k log-probabilities and quantised view parameters for n views."""
    logits = torch.randn(n, layout.num_classes, generator=gen) * 3
    logp, indices = torch.log_softmax(logits, dim=1).topk(layout.top_k, dim=1)
    out = {"indices": indices, "logp": logp}
    if layout.view_kind != "none":
        c = layout.crop_size // 2
        start = torch.rand(n, c, generator=gen) * 0.5
        length = 0.1 + torch.rand(n, c, generator=gen) * 0.4
        out["crop"] = quantize_crop(torch.cat([start, length], dim=1))
        out["flip"] = torch.rand(n, generator=gen) < 0.5
    if layout.has_mix:
        out["partner"] = torch.randint(0, layout.num_samples, (n,), generator=gen)
        out["ratio"] = quantize_ratio(0.5 + 0.5 * torch.rand(n, generator=gen))
    return out


def build_store(path, layout, samples_per_shard=4, meta=META, seed=0):
    """Write a complete store; returns the per-view inputs, ordered (sample, view)."""
    gen = torch.Generator().manual_seed(seed)
    views = random_views(layout, layout.num_records, gen)
    writer = SoftLabelStoreWriter(path, layout, meta, samples_per_shard)
    V = layout.views_per_sample
    for shard_id in range(writer.num_shards):
        lo, hi = writer.shard_samples(shard_id)
        part = {k: v[lo * V : hi * V] for k, v in views.items()}
        writer.write_shard(shard_id, writer.encode(**part))
    writer.close()
    return views


def layout_of(**kw):
    base = dict(num_samples=10, views_per_sample=3, num_classes=20, top_k=5)
    base.update(kw)
    return StoreLayout(**base)


# --- layout ------------------------------------------------------------------------------


def test_bytes_per_view_for_each_format():
    assert layout_of(value_format="uint8", view_kind="image").bytes_per_view == 20
    assert layout_of(value_format="fp16", view_kind="image").bytes_per_view == 25
    assert layout_of(value_format="uint8", view_kind="signal").bytes_per_view == 18
    assert layout_of(value_format="uint8", view_kind="none").bytes_per_view == 15
    assert layout_of(value_format="uint8", has_mix=True).bytes_per_view == 25
    assert layout_of(num_classes=70000).bytes_per_view == 30
    dtype = layout_of().record_dtype()
    assert dtype.isalignedstruct is False and dtype.itemsize == 20
    assert layout_of().index_dtype == "uint16"
    assert layout_of(num_classes=65535).index_dtype == "uint16"
    assert layout_of(num_classes=65536).index_dtype == "uint32"


def test_layout_json_round_trip_and_validation():
    layout = layout_of(value_format="fp16", view_kind="signal", has_mix=True, value_max=12.0)
    data = json.loads(json.dumps(layout.to_dict()))
    assert StoreLayout.from_dict(data) == layout
    data["index_dtype"] = "uint32"
    with pytest.raises(StoreError, match="index_dtype"):
        StoreLayout.from_dict(data)
    with pytest.raises(StoreError, match="top_k"):
        layout_of(top_k=21)
    with pytest.raises(StoreError, match="value_format"):
        layout_of(value_format="int4")
    assert issubclass(StoreError, KDForgeError)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("value_format", ["uint8", "fp16"])
@pytest.mark.parametrize("view_kind,has_mix", [("image", False), ("signal", True), ("none", False)])
def test_round_trip(tmp_path, value_format, view_kind, has_mix):
    layout = layout_of(value_format=value_format, view_kind=view_kind, has_mix=has_mix)
    views = build_store(tmp_path / "store", layout, samples_per_shard=4)  # shards 4, 4, 2
    store = SoftLabelStore(tmp_path / "store")
    store.verify()
    assert store.num_shards == 3
    V = layout.views_per_sample
    sample = torch.tensor([9, 0, 5, 5, 3, 8])
    view = torch.tensor([2, 0, 1, 2, 0, 1])
    rec = store.read(sample, view)
    row = sample * V + view
    assert rec.indices.dtype == torch.int64 and rec.logp.dtype == torch.float32
    assert torch.equal(rec.indices, views["indices"][row])
    expected = views["logp"][row]
    if value_format == "uint8":
        assert (rec.logp - expected).abs().max() <= layout.step / 2 + 1e-6
    else:
        assert torch.equal(rec.logp, expected.half().float())
    if view_kind == "none":
        assert rec.crop is None and rec.flip is None
    else:
        assert rec.crop.dtype == torch.float32 and rec.crop.shape == (6, layout.crop_size)
        assert torch.equal(rec.crop, views["crop"][row])  # exact: the quantised values
        assert torch.equal(rec.flip, views["flip"][row])
    if has_mix:
        assert torch.equal(rec.partner, views["partner"][row])
        assert torch.equal(rec.ratio, views["ratio"][row])
    else:
        assert rec.partner is None and rec.ratio is None


def test_uint32_indices_are_exact_for_many_classes(tmp_path):
    layout = layout_of(num_classes=70000, num_samples=4, views_per_sample=2)
    assert layout.index_dtype == "uint32"
    assert layout.record_dtype()["indices"].base == np.dtype("<u4")
    views = build_store(tmp_path / "s", layout)
    indices = views["indices"].clone()
    indices[0] = torch.tensor([69999, 65535, 65536, 0, 12345])
    writer = SoftLabelStoreWriter(tmp_path / "s2", layout, META, samples_per_shard=4)
    writer.write_shard(0, writer.encode(indices, views["logp"], views["crop"], views["flip"]))
    writer.close()
    rec = SoftLabelStore(tmp_path / "s2").read(
        torch.arange(4).repeat_interleave(2), torch.arange(2).repeat(4)
    )
    assert torch.equal(rec.indices, indices)


def test_uint8_quantisation_bound_and_clamping():
    layout = layout_of(num_samples=1, views_per_sample=1)
    logp = torch.tensor([[0.0, -0.03, -5.0, -15.99, -math.inf]])
    rec = layout.decode(
        layout.encode(
            torch.tensor([[0, 1, 2, 3, 4]]),
            logp,
            quantize_crop(torch.tensor([[0.0, 0.0, 1.0, 1.0]])),
        )
    )
    assert (rec.logp[0, :4] - logp[0, :4]).abs().max() <= layout.step / 2 + 1e-6
    assert rec.logp[0, 4] == pytest.approx(-16.0)  # -inf is clamped to -value_max
    fp = layout_of(num_samples=1, views_per_sample=1, value_format="fp16")
    rec = fp.decode(
        fp.encode(torch.tensor([[0, 1, 2, 3, 4]]), logp, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    )
    assert rec.logp[0, 4] == -65504.0 and torch.isfinite(rec.logp).all()


def test_encode_validation():
    layout = layout_of(num_samples=2, views_per_sample=1)
    idx = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    logp = torch.full((2, 5), -2.0)
    crop = quantize_crop(torch.tensor([[0.1, 0.2, 0.5, 0.5]] * 2))
    with pytest.raises(StoreError, match=r"\[0, 20\)"):
        layout.encode(idx + 15, logp, crop)
    with pytest.raises(StoreError, match="distinct"):
        layout.encode(torch.tensor([[0, 0, 1, 2, 3]] * 2), logp, crop)
    with pytest.raises(StoreError, match="<= 0"):
        layout.encode(idx, -logp, crop)
    with pytest.raises(StoreError, match="NaN"):
        layout.encode(idx, logp.clone().fill_(math.nan), crop)
    with pytest.raises(StoreError, match="quantize_crop"):
        layout.encode(idx, logp, torch.tensor([[0.1234, 0.2, 0.5, 0.5]] * 2))
    with pytest.raises(StoreError, match="crop is required"):
        layout.encode(idx, logp)
    with pytest.raises(StoreError, match="has_mix=False"):
        layout.encode(idx, logp, crop, partner=torch.tensor([0, 1]), ratio=torch.tensor([1.0, 1.0]))
    mix = layout_of(num_samples=2, views_per_sample=1, has_mix=True)
    with pytest.raises(StoreError, match="sample ids"):
        mix.encode(idx, logp, crop, partner=torch.tensor([0, 2]), ratio=torch.tensor([1.0, 1.0]))
    with pytest.raises(StoreError, match="quantize_ratio"):
        mix.encode(idx, logp, crop, partner=torch.tensor([0, 1]), ratio=torch.tensor([0.7777, 1.0]))


# --- quantisation of view parameters and seeds ----------------------------------------------


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


# --- soft targets ------------------------------------------------------------------------------


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


# --- failures and verification -------------------------------------------------------------------


def test_missing_meta_names_the_path(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(StoreError, match="meta.json.*does not exist"):
        SoftLabelStore(tmp_path / "s")
    (tmp_path / "s" / "meta.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot be read"):
        SoftLabelStore(tmp_path / "s")
    with pytest.raises(StoreError, match="does not exist"):
        SoftLabelStore(tmp_path / "nowhere")


def test_truncated_shard_is_refused_with_sizes(tmp_path):
    layout = layout_of()
    build_store(tmp_path / "s", layout)
    shard = tmp_path / "s" / "shard-00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])
    expected = 4 * 3 * 20
    with pytest.raises(
        StoreError, match=rf"shard-00001\.bin has {expected - 7} bytes .* needs {expected}"
    ):
        SoftLabelStore(tmp_path / "s")
    shard.unlink()
    with pytest.raises(StoreError, match="shard-00001.bin .*missing"):
        SoftLabelStore(tmp_path / "s")


def test_flipped_byte_fails_verify_naming_the_shard(tmp_path):
    build_store(tmp_path / "s", layout_of())
    shard = tmp_path / "s" / "shard-00002.bin"
    data = bytearray(shard.read_bytes())
    data[11] ^= 0x01
    shard.write_bytes(bytes(data))
    store = SoftLabelStore(tmp_path / "s")  # the size is right: opening works
    with pytest.raises(StoreError, match=r"shard-00002\.bin.*regenerate.*same generation command"):
        store.verify()


def test_writer_resume_skips_good_and_reports_corrupt_shards(tmp_path):
    layout = layout_of()
    build_store(tmp_path / "s", layout)
    writer = SoftLabelStoreWriter(tmp_path / "s", layout, META, samples_per_shard=4)
    assert writer.finished_shards() == [0, 1, 2]
    good = (tmp_path / "s" / "shard-00000.bin").stat().st_mtime_ns
    bad = tmp_path / "s" / "shard-00001.bin"
    data = bytearray(bad.read_bytes())
    data[0] ^= 0xFF
    bad.write_bytes(bytes(data))
    (tmp_path / "s" / "shard-00002.bin").write_bytes(b"\0" * 5)
    with pytest.warns(UserWarning) as record:
        finished = writer.finished_shards()
    messages = " | ".join(str(w.message) for w in record)
    assert "shard-00001.bin is corrupt" in messages and "shard-00002.bin is truncated" in messages
    assert finished == [0]
    status = writer.shard_status()
    assert status[1].startswith("corrupt") and status[2].startswith("truncated (5 bytes")
    assert writer.pending_shards() == [1, 2]
    # resume: rewrite only the pending shards, then close again
    gen = torch.Generator().manual_seed(0)
    views = random_views(layout, layout.num_records, gen)
    for shard_id in writer.pending_shards():
        lo, hi = writer.shard_samples(shard_id)
        part = {k: v[lo * 3 : hi * 3] for k, v in views.items()}
        writer.write_shard(shard_id, writer.encode(**part))
    assert not (tmp_path / "s" / "meta.json").exists()  # stale checksums are removed
    writer.close()
    assert (tmp_path / "s" / "shard-00000.bin").stat().st_mtime_ns == good
    SoftLabelStore(tmp_path / "s").verify()


def test_writer_refuses_wrong_records_and_other_configs(tmp_path):
    layout = layout_of()
    build_store(tmp_path / "s", layout)
    writer = SoftLabelStoreWriter(tmp_path / "t", layout, META, samples_per_shard=4)
    with pytest.raises(StoreError, match="12 records"):
        writer.write_shard(0, layout.empty(5))
    with pytest.raises(StoreError, match="dtype"):
        writer.write_shard(0, layout_of(value_format="fp16").empty(12))
    with pytest.raises(StoreError, match="out of range"):
        writer.write_shard(3, layout.empty(12))
    with pytest.raises(StoreError, match="another configuration"):
        SoftLabelStoreWriter(tmp_path / "s", layout, {**META, "store_seed": 8}, samples_per_shard=4)


def test_two_writers_with_disjoint_shards_and_one_close(tmp_path):
    layout = layout_of(has_mix=True)
    gen = torch.Generator().manual_seed(3)
    views = random_views(layout, layout.num_records, gen)
    path = tmp_path / "s"
    # two "processes": each owns every other shard
    for rank in (0, 1):
        writer = SoftLabelStoreWriter(path, layout, META, samples_per_shard=3)  # 4 shards
        for shard_id in range(rank, writer.num_shards, 2):
            lo, hi = writer.shard_samples(shard_id)
            part = {k: v[lo * 3 : hi * 3] for k, v in views.items()}
            writer.write_shard(shard_id, writer.encode(**part))
        if rank == 0:
            with pytest.raises(StoreError, match=r"2 of 4 shards are not done.*shard-00001"):
                writer.close()
    collector = SoftLabelStoreWriter(path, layout, META, samples_per_shard=3)
    collector.close(verify=True)
    store = SoftLabelStore(path)
    store.verify()
    meta = json.loads((path / "meta.json").read_text())
    assert [s["samples"] for s in meta["shards"]] == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert meta["meta"] == META and meta["version"] == 1
    rec = store.read(torch.arange(10).repeat_interleave(3), torch.arange(3).repeat(10))
    assert torch.equal(rec.indices, views["indices"])
    assert torch.equal(rec.partner, views["partner"]) and torch.equal(rec.ratio, views["ratio"])
    # picklable for DataLoader workers (maps reopen lazily)
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone.read([4], [1]).indices, rec.indices[13:14])


def test_read_validates_ids_and_replays_params(tmp_path):
    layout = layout_of()
    views = build_store(tmp_path / "s", layout)
    store = SoftLabelStore(tmp_path / "s")
    with pytest.raises(StoreError, match=r"sample ids must lie in \[0, 10\)"):
        store.read(torch.tensor([10]), torch.tensor([0]))
    with pytest.raises(StoreError, match=r"view ids must lie in \[0, 3\)"):
        store.read(torch.tensor([0]), torch.tensor([3]))
    rec = store.read(torch.tensor([2]), torch.tensor([1]))
    params = rec.augment_params()
    assert torch.equal(params.crop, views["crop"][7:8]) and torch.equal(
        params.flip, views["flip"][7:8]
    )
    assert torch.equal(
        store.view_seed(torch.tensor([2]), torch.tensor([1])),
        view_seed(7, torch.tensor([2]), torch.tensor([1])),
    )
    targets = store.soft_targets(rec, T=2.0)
    assert targets.shape == (1, 20) and torch.allclose(targets.sum(), torch.tensor(1.0))


def test_check_compatible(tmp_path):
    build_store(tmp_path / "s", layout_of())
    store = SoftLabelStore(tmp_path / "s")
    store.check_compatible(
        num_samples=10, num_classes=20, teacher=META["teacher"], view=META["view"], dataset="tiny"
    )
    with pytest.raises(StoreError, match="11 samples .* made for 10.*regenerate"):
        store.check_compatible(num_samples=11)
    with pytest.raises(StoreError, match="100 classes .* holds 20"):
        store.check_compatible(num_classes=100)
    with pytest.raises(StoreError, match=r"teacher differs in sha256='zzz' \(store: 'abc123'\)"):
        store.check_compatible(teacher={"name": "resnet18", "sha256": "zzz"})
    with pytest.raises(StoreError, match="view"):
        store.check_compatible(view={"scale": [0.35, 1.0], "flip": 0.5})
    with pytest.raises(StoreError, match="'cifar10' \\(store: 'tiny'\\)"):
        store.check_compatible(dataset="cifar10")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_store(tmp_path / "bare", layout_of(), meta={})
    with pytest.raises(StoreError, match="records no 'teacher'"):
        SoftLabelStore(tmp_path / "bare").check_compatible(teacher="x")


# --- function matching: mixup ratios, counter-based draws, mixed views ----------------------


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


@pytest.mark.parametrize("augment", [ImageAugment(), SignalAugment(flip=0.5)])
def test_mixed_views_are_a_pure_function_of_sample_and_view(augment):
    n = 60
    mixed = MixedViews(augment, Mixup(alpha=1.0, mode="cutmix"), store_seed=3, num_samples=n)
    sample, view = torch.arange(n).repeat_interleave(5), torch.arange(5).repeat(n)
    own, partner, ratio = mixed.draw(sample, view)
    # partners: other samples, from the whole set, not only near the sample
    assert (partner != sample).all() and partner.min() >= 0 and partner.max() < n
    assert torch.unique(partner).numel() > 0.9 * n
    assert ((partner - sample).abs() > n // 2).any()
    # crops on the store's grid; the partner's view of a sample is that sample's own crop
    assert torch.equal(quantize_crop(own.crop), own.crop)
    assert torch.equal(mixed.crops(sample, view).crop, own.crop)
    assert torch.equal(quantize_ratio(ratio), ratio) and ratio.min() >= 0.5
    for b in (0, 17, 299):  # one view alone gives its batch row
        alone, p, r = mixed.draw(sample[b:b + 1], view[b:b + 1])
        assert torch.equal(alone.crop[0], own.crop[b]) and alone.flip[0] == own.flip[b]
        assert p[0] == partner[b] and r[0] == ratio[b]
    size = (8, 8) if isinstance(augment, ImageAugment) else (40,)
    mix = mixed.mix_params(sample, view, partner, ratio, size)
    again = mixed.mix_params(sample[5:6], view[5:6], partner[5:6], ratio[5:6], size)
    assert torch.equal(again.box[0], mix.box[5]) and again.ratio[0] == mix.ratio[5]
    # the box has the area 1 - ratio, snapped to whole pixels
    pixels = torch.tensor(size, dtype=torch.float64)
    rank = len(size)
    box_pixels = (mix.box[:, rank:].double() * pixels).prod(1)
    assert torch.allclose(1 - box_pixels / pixels.prod(), mix.ratio.double(), atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        MixedViews(augment, Mixup(), store_seed=3, num_samples=1)
