"""Writing, resuming, reading and verifying stores (kdforge.store.writer, .reader, .compat)."""

import json
import pickle
import warnings

import pytest
import torch

from kdforge.store import SoftLabelStore, SoftLabelStoreWriter, StoreError, view_seed
from tests.store.builders import META, build_store, layout_of, random_views


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
