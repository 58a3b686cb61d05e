"""FKD end to end: label views once, replay them exactly, train without the teacher."""

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from kdforge import ConfigError, StoreError, api
from kdforge.cli import main
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.core.outputs import Batch
from kdforge.data.loaders import EpochBatch, EpochBatchSampler, to_batch
from kdforge.soft_labels import generate
from kdforge.teachers.store import SoftLabelStore
from kdforge.teachers.stored import StoredTeacher, StoreView, epoch_views
from tests.conftest import synthetic_config


@pytest.fixture
def teacher(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, name="teacher", student={"name": "cnn2d"}))
    return api.train(cfg, verbose=False).run_dir


def store_config(tmp_path, teacher, **extra):
    base = synthetic_config(tmp_path)
    cfg = {"name": "store", "output_dir": str(tmp_path / "stores"), "data": base["data"],
           "teacher": {"run": str(teacher)}, "device": "cpu",
           "store": {"views_per_sample": 4, "top_k": 3, "samples_per_shard": 40,
                     "batch_size": 64}}
    cfg.update(extra)
    return parse_config(cfg, kind=SoftLabelConfig)


def test_stored_views_replay_to_the_labels_the_teacher_gave(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)
    assert stats["views"] == 96 * 4 and stats["bytes_per_view"] == 14  # k=3: 6 + 3 + crop 4 + flags 1
    store = SoftLabelStore(stats["path"])
    store.verify()
    view = StoreView(store, (1, 8, 8))
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    batch = data.train.__getitems__(list(range(10)))
    replayed = view(Batch(batch["input"], batch["target"], index=batch["index"]),
                    torch.Generator().manual_seed(0))
    net = api.build_teacher(parse_config({**synthetic_config(tmp_path),
                                          "teacher": {"run": str(teacher)}}), 4, (1, 8, 8))
    logp = torch.log_softmax(net(replayed.inputs).logits, -1)
    values, indices = logp.topk(3, -1)
    rec = replayed.view.records
    assert torch.equal(indices, rec.indices)
    assert torch.allclose(values.clamp(min=-16), rec.logp, atol=store.layout.step / 2 + 1e-6)


def test_training_from_a_store_never_runs_the_teacher_and_reports_fidelity(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)
    again = generate(store_config(tmp_path, teacher), verbose=False)
    assert again["skipped_shards"] == 3 and again["views"] == 0  # resumable: nothing to redo
    cfg = synthetic_config(tmp_path, name="fkd", student={"name": "mlp", "hidden": [16]},
                           teacher={"store": stats["path"], "repeats": 2},
                           losses=[{"name": "soft_ce", "T": 1}])
    result = api.train(parse_config(cfg), verbose=False)
    assert 0 <= result.summary["test"]["agreement"] <= 1  # measured with the store's teacher
    assert result.summary["teacher_params"] == 0


def test_store_that_does_not_match_is_refused_before_training(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)
    cfg = synthetic_config(tmp_path, name="bad", data={"num_train": 120},
                           teacher={"store": stats["path"]}, losses=[{"name": "kd"}])
    with pytest.raises(StoreError, match="samples"):
        api.train(parse_config(cfg), verbose=False)
    shard = sorted((tmp_path / "stores" / "store").glob("shard-*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = synthetic_config(tmp_path, name="corrupt", teacher={"store": stats["path"]},
                           losses=[{"name": "kd"}])
    with pytest.raises(StoreError, match=shard.name):
        api.train(parse_config(cfg), verbose=False)
    assert not (tmp_path / "runs" / "corrupt" / "checkpoint.pt").exists()
    with pytest.raises(Exception, match="view"):
        api.train(parse_config({**cfg, "name": "v", "view": {"name": "consistent"}}),
                  verbose=False)


def test_signal_store_with_noise_replays_exactly(tmp_path):
    data = {"name": "synthetic", "input_shape": [1, 40], "num_train": 64, "num_test": 16,
            "batch_size": 32, "num_classes": 4, "val_fraction": 0.25}
    t_cfg = synthetic_config(tmp_path, name="t1d", data=data, student={"name": "cnn1d"})
    t_run = api.train(parse_config(t_cfg), verbose=False).run_dir
    cfg = store_config(tmp_path, t_run, data=data,
                       view={"name": "consistent", "noise_std": 0.3})
    stats = generate(cfg, verbose=False)
    store = SoftLabelStore(stats["path"])
    view = StoreView(store, (1, 40))
    run_data = api.build_data(parse_config({**t_cfg, "data": data}))
    items = run_data.train.__getitems__(list(range(8)))
    out = view(Batch(items["input"], items["target"], index=items["index"]),
               torch.Generator().manual_seed(1))
    net = api.build_teacher(parse_config({**t_cfg, "teacher": {"run": str(t_run)}}), 4, (1, 40))
    indices = torch.log_softmax(net(out.inputs).logits, -1).topk(3, -1).indices
    assert torch.equal(indices, out.view.records.indices)
    assert not torch.equal(out.inputs, items["input"])


def test_fixed_view_store_holds_one_label_per_sample_and_cli(tmp_path, teacher, capsys):
    path = tmp_path / "sl.yaml"
    cfg = store_config(tmp_path, teacher, view={"name": "fixed"}, name="fixed")
    path.write_text(cfg.to_yaml())
    assert main(["soft-labels", str(path), "--quiet"]) == 0
    assert '"bytes_per_view": 9' in capsys.readouterr().out  # k=3 indices + values, no crop
    store = SoftLabelStore(tmp_path / "stores" / "fixed")
    assert store.views_per_sample == 1 and store.layout.view_kind == "none"
    assert main(["soft-labels", str(path), "--set", "view.name=independent"]) == 2
    assert "consistent" in capsys.readouterr().err


def test_second_teacher_labels_the_same_views(tmp_path, teacher):
    first = generate(store_config(tmp_path, teacher), verbose=False)
    other = api.train(parse_config(synthetic_config(tmp_path, name="teacher2", seed=5,
                                                    student={"name": "mlp"})),
                      verbose=False).run_dir
    cfg = store_config(tmp_path, other, name="store2", seed=99,
                       store={"views_per_sample": 4, "top_k": 3, "samples_per_shard": 40,
                              "views_from": first["path"]})
    second = generate(cfg, verbose=False)
    a, b = SoftLabelStore(first["path"]), SoftLabelStore(second["path"])
    samples, views = torch.arange(96).repeat_interleave(4), torch.arange(4).repeat(96)
    ra, rb = a.read(samples, views), b.read(samples, views)
    assert torch.equal(ra.crop, rb.crop) and torch.equal(ra.flip, rb.flip)
    assert b.meta["views_from"] == first["path"] and b.meta["store_seed"] == a.meta["store_seed"]
    bad = store_config(tmp_path, other, name="store3",
                       store={"views_per_sample": 2, "views_from": first["path"]})
    with pytest.raises(Exception, match="views per sample"):
        generate(bad, verbose=False)


# --- function matching from a store (Beyer et al. 2022): stored mixup / CutMix pairs ----------


@pytest.fixture
def labelled(monkeypatch):
    """Every input the teacher labels while a store is generated, in call order."""
    seen = []
    build = api.build_teacher

    def spy(*args, **kwargs):
        net = build(*args, **kwargs)
        if net is not None:
            net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
        return net

    monkeypatch.setattr(api, "build_teacher", spy)
    return seen


def fm_view(mode, **options):
    return {"name": "function_matching", "mode": mode, "alpha": 0.5, **options}


def replay(store, data, samples, repeats=1, seed=3):
    view = StoreView(store, tuple(data.splits.input_shape), repeats=repeats, dataset=data.train)
    items = data.train.__getitems__(samples)
    return view(Batch(items["input"], items["target"], index=items["index"]),
                torch.Generator().manual_seed(seed))


def check_mix_from_the_math(store, data, out, mode):
    """The replayed rows equal own view (x) partner view, mixed as the stored ratio says."""
    rec = out.view.records
    aug = StoreView(store, tuple(data.splits.input_shape), dataset=data.train).augment
    seeds = store.view_seed if getattr(aug, "noise_std", 0) > 0 else (lambda s, v: None)
    own_x = data.train.__getitems__(out.view.sample.tolist())["input"]
    own = aug.apply(own_x, rec.augment_params(noise_seed=seeds(out.view.sample, out.view.view)))
    partner_rec = store.read(rec.partner, out.view.view)
    part_x = data.train.__getitems__(rec.partner.tolist())["input"]
    part = aug.apply(part_x, partner_rec.augment_params(
        noise_seed=seeds(rec.partner, out.view.view)))
    if mode == "mixup":
        r = rec.ratio.view(-1, *[1] * (own.dim() - 1))
        assert torch.allclose(out.inputs, r * own + (1 - r) * part, atol=1e-6)
        assert torch.equal(out.view.mix.ratio, rec.ratio)
        return
    size = own.shape[2:]
    for b in range(out.inputs.shape[0]):  # CutMix: one box of the partner, the rest own
        pasted = (out.inputs[b] == part[b]).all(0) & (out.inputs[b] != own[b]).any(0)
        assert ((out.inputs[b] == own[b]).all(0) | pasted).all()
        side = math.sqrt(1 - float(rec.ratio[b]))
        extent = [round((1 - float(rec.ratio[b])) * size[0])] if len(size) == 1 else \
            [round(side * n) for n in size]
        where = pasted.nonzero()
        assert where.shape[0] == math.prod(extent)  # a whole box of that size...
        if where.numel():  # ...in one piece
            assert (where.max(0).values - where.min(0).values + 1).tolist() == extent
        kept = 1 - math.prod(extent) / math.prod(size)
        assert float(out.view.mix.ratio[b]) == pytest.approx(kept, abs=1e-6)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_function_matching_store_replays_the_mixed_images_the_teacher_labelled(
        tmp_path, teacher, labelled, mode):
    stats = generate(store_config(tmp_path, teacher, view=fm_view(mode)), verbose=False)
    assert stats["bytes_per_view"] == 19  # 14 + partner (uint32) + ratio (uint8)
    store = SoftLabelStore(stats["path"])
    assert store.layout.has_mix
    assert store.meta["view"]["mix"] == {"alpha": 0.5, "mode": mode}
    seen = torch.cat(labelled)  # one row per record, ordered (sample, view)
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    out = replay(store, data, list(range(0, 96, 5)), repeats=2)
    assert out.inputs.shape == (40, 1, 8, 8) and out.targets is None  # labels: false
    rows = out.view.sample * 4 + out.view.view
    assert torch.equal(out.inputs, seen[rows])  # bit-identical to the labelled input
    net = api.build_teacher(parse_config({**synthetic_config(tmp_path),
                                          "teacher": {"run": str(teacher)}}), 4, (1, 8, 8))
    indices = torch.log_softmax(net(out.inputs).logits, -1).topk(3, -1).indices
    assert torch.equal(indices, out.view.records.indices)
    check_mix_from_the_math(store, data, out, mode)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_function_matching_store_of_noisy_signals_replays_exactly(tmp_path, labelled, mode):
    data_cfg = {"name": "synthetic", "input_shape": [1, 40], "num_train": 64, "num_test": 16,
                "batch_size": 32, "num_classes": 4, "val_fraction": 0.25}
    t_cfg = synthetic_config(tmp_path, name="t1d", data=data_cfg, student={"name": "cnn1d"})
    t_run = api.train(parse_config(t_cfg), verbose=False).run_dir
    labelled.clear()
    cfg = store_config(tmp_path, t_run, data=data_cfg,
                       view=fm_view(mode, noise_std=0.3, flip=0.5, labels=True))
    stats = generate(cfg, verbose=False)
    assert stats["bytes_per_view"] == 17  # signal: crop 2 bytes, not 4
    store = SoftLabelStore(stats["path"])
    data = api.build_data(parse_config({**t_cfg, "data": data_cfg}))
    out = replay(store, data, list(range(48)))
    rows = out.view.sample * 4 + out.view.view
    assert torch.equal(out.inputs, torch.cat(labelled)[rows])
    net = api.build_teacher(parse_config({**t_cfg, "teacher": {"run": str(t_run)}}), 4, (1, 40))
    indices = torch.log_softmax(net(out.inputs).logits, -1).topk(3, -1).indices
    assert torch.equal(indices, out.view.records.indices)
    check_mix_from_the_math(store, data, out, mode)
    # labels: true gives mixed one-hot targets: own share on the own class, rest on the partner's
    own_y = data.train.__getitems__(list(range(48)))["target"]
    partner_y = data.train.__getitems__(out.view.records.partner.tolist())["target"]
    ratio = out.view.mix.ratio
    expected = torch.nn.functional.one_hot(own_y, 4) * ratio[:, None] + \
        torch.nn.functional.one_hot(partner_y, 4) * (1 - ratio[:, None])
    assert torch.allclose(out.targets, expected.float())


def test_partners_cover_the_whole_set_and_records_do_not_depend_on_sharding(
        tmp_path, teacher, labelled):
    first = generate(store_config(tmp_path, teacher, view=fm_view("cutmix")), verbose=False)
    store = SoftLabelStore(first["path"])
    samples, views = torch.arange(96).repeat_interleave(4), torch.arange(4).repeat(96)
    rec = store.read(samples, views)
    assert (rec.partner != samples).all()
    assert torch.unique(rec.partner).numel() >= 85  # 384 draws over 95 others: ~94 expected
    in_shard0 = samples < 40  # samples_per_shard is 40: partners come from every shard
    assert (rec.partner[in_shard0] >= 80).any() and (rec.partner[~in_shard0] < 40).any()
    seen = torch.cat(labelled)
    labelled.clear()
    # every record is a pure function of (store seed, sample, view): one shard, other batches
    other = store_config(tmp_path, teacher, name="one-shard", view=fm_view("cutmix"),
                         store={"views_per_sample": 4, "top_k": 3, "samples_per_shard": 96,
                                "batch_size": 28})
    again = SoftLabelStore(generate(other, verbose=False)["path"])
    assert torch.equal(torch.cat(labelled), seen)
    rec2 = again.read(samples, views)
    for field in ("crop", "flip", "partner", "ratio"):
        assert torch.equal(getattr(rec2, field), getattr(rec, field))


def test_function_matching_generation_resumes_with_identical_records(tmp_path, teacher):
    cfg = store_config(tmp_path, teacher, view=fm_view("mixup"))
    generate(cfg, verbose=False)
    root = tmp_path / "stores" / "store"
    shards = sorted(root.glob("shard-*.bin"))
    before = [s.read_bytes() for s in shards]
    shards[1].unlink()
    damaged = bytearray(before[2])
    damaged[3] ^= 0xFF
    shards[2].write_bytes(bytes(damaged))
    stats = generate(cfg, verbose=False)  # rewrites the missing and the corrupt shard
    assert stats["skipped_shards"] == 1 and stats["views"] == (96 - 40) * 4
    assert [s.read_bytes() for s in shards] == before
    SoftLabelStore(root).verify()


def test_second_teacher_labels_the_same_mixed_views(tmp_path, teacher, labelled):
    first = generate(store_config(tmp_path, teacher, view=fm_view("cutmix")), verbose=False)
    seen_first = torch.cat(labelled)
    labelled.clear()
    other = api.train(parse_config(synthetic_config(tmp_path, name="teacher2", seed=5,
                                                    student={"name": "mlp"})),
                      verbose=False).run_dir
    labelled.clear()
    cfg = store_config(tmp_path, other, name="store2", seed=99, view=fm_view("cutmix"),
                       store={"views_per_sample": 4, "top_k": 3, "samples_per_shard": 40,
                              "views_from": first["path"]})
    second = generate(cfg, verbose=False)
    assert torch.equal(torch.cat(labelled), seen_first)  # the very same mixed inputs
    a, b = SoftLabelStore(first["path"]), SoftLabelStore(second["path"])
    samples, views = torch.arange(96).repeat_interleave(4), torch.arange(4).repeat(96)
    ra, rb = a.read(samples, views), b.read(samples, views)
    for field in ("crop", "flip", "partner", "ratio"):
        assert torch.equal(getattr(ra, field), getattr(rb, field))
    assert b.meta["store_seed"] == a.meta["store_seed"] and b.layout.has_mix
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    out = replay(b, data, list(range(20)))
    assert torch.equal(out.inputs, seen_first[out.view.sample * 4 + out.view.view])
    for view in ({"name": "consistent"}, fm_view("mixup")):  # other geometry: refused
        bad = store_config(tmp_path, other, name="store3", view=view,
                           store={"views_per_sample": 4, "views_from": first["path"]})
        with pytest.raises(ConfigError, match="views_from"):
            generate(bad, verbose=False)


def test_function_matching_store_errors_name_the_fix(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher, view=fm_view("mixup")), verbose=False)
    store = SoftLabelStore(stats["path"])
    with pytest.raises(ConfigError, match="dataset=train_set"):
        StoreView(store, (1, 8, 8))
    small = api.build_data(parse_config(synthetic_config(tmp_path, data={"num_train": 60})))
    with pytest.raises(StoreError, match="96"):
        StoreView(store, (1, 8, 8), dataset=small.train)
    with pytest.raises(ConfigError, match="function_matching"):
        store_config(tmp_path, teacher, view={"name": "independent"})
    with pytest.raises(ConfigError, match="mixer"):
        generate(store_config(tmp_path, teacher, name="bad", view=fm_view("mixer")),
                 verbose=False)
    assert not (tmp_path / "stores" / "bad").exists()  # refused before labelling anything


def test_training_from_a_function_matching_store_is_deterministic(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher, view=fm_view("cutmix")), verbose=False)

    def run(name):
        cfg = synthetic_config(tmp_path, name=name, student={"name": "mlp", "hidden": [16]},
                               teacher={"store": stats["path"], "repeats": 2},
                               losses=[{"name": "kd", "T": 1}])
        return api.train(parse_config(cfg), verbose=False)

    a, b = run("fm-a"), run("fm-b")
    assert a.summary["teacher_params"] == 0  # the teacher never ran
    wa = torch.load(a.run_dir / "checkpoint.pt", weights_only=False)["student"]
    wb = torch.load(b.run_dir / "checkpoint.pt", weights_only=False)["student"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert math.isfinite(a.summary["val"]["nll"])


# --- the loader path: StoreSamples reads the records next to the data --------------------------


def test_epoch_views_are_a_pure_function_of_seed_and_epoch():
    a = epoch_views(7, 3, 100, 2, 50)
    assert a.shape == (100, 2) and a.dtype == torch.int32
    assert torch.equal(a, epoch_views(7, 3, 100, 2, 50))
    assert int(a.min()) >= 0 and int(a.max()) < 50 and len(a.unique()) > 40
    assert not torch.equal(a, epoch_views(7, 4, 100, 2, 50))  # a new draw every epoch
    assert not torch.equal(a, epoch_views(8, 3, 100, 2, 50))  # and for every run seed


def test_store_samples_load_the_epochs_views_and_replay_what_the_teacher_labelled(
        tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)
    store = SoftLabelStore(stats["path"])
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    view = StoreView(store, (1, 8, 8), repeats=2, fill="smooth")
    samples = view.loader_dataset(data.train, seed=5)
    ids = [9, 0, 31, 4]
    raw = samples.__getitems__(EpochBatch(3, ids))
    load = raw["view"]
    assert torch.equal(raw["index"], torch.tensor(ids))
    expected = epoch_views(5, 3, store.num_samples, 2, store.views_per_sample)[ids].reshape(-1)
    assert torch.equal(load.view, expected.long())
    sample = torch.tensor(ids).repeat_interleave(2)
    assert torch.equal(load.records.indices, store.read(sample, load.view).indices)
    assert torch.equal(load.log_probs, store.log_probs(load.records))
    replayed = view(to_batch(raw))
    assert replayed.inputs.shape == (8, 1, 8, 8) and torch.equal(replayed.index, sample)
    net = api.build_teacher(parse_config({**synthetic_config(tmp_path),
                                          "teacher": {"run": str(teacher)}}), 4, (1, 8, 8))
    top = torch.log_softmax(net(replayed.inputs).logits, -1).topk(3, -1).indices
    assert torch.equal(top, replayed.view.records.indices)  # the labelled views, exactly
    outputs = StoredTeacher(store)(replayed.inputs, replayed)
    assert torch.equal(outputs.logits, load.log_probs) and outputs.probs is not None
    with pytest.raises(ConfigError, match="EpochBatch"):
        samples.__getitems__([(3, 0), (3, 1)])
    assert torch.equal(samples[(3, 31)]["view"].view, load.view[4:6])  # one sample


def test_store_training_does_not_depend_on_the_number_of_workers(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)

    def weights(name, **data):
        cfg = synthetic_config(tmp_path, name=name, student={"name": "mlp", "hidden": [16]},
                               teacher={"store": stats["path"], "repeats": 2},
                               losses=[{"name": "kd", "T": 1}], data=data)
        run = api.train(parse_config(cfg), verbose=False)
        return torch.load(run.run_dir / "checkpoint.pt", weights_only=False)["student"]

    plain, workers = weights("plain"), weights("workers", num_workers=1)
    assert all(torch.equal(plain[k], workers[k]) for k in plain)


def test_epoch_batches_key_the_distributed_order():
    plain = DistributedSampler(range(10), num_replicas=2, rank=1, seed=3)
    keyed = EpochBatchSampler(DistributedSampler(range(10), num_replicas=2, rank=1, seed=3),
                              2, drop_last=False)
    plain.set_epoch(4)
    keyed.set_epoch(4)
    order = list(plain)
    assert list(keyed) == [EpochBatch(4, order[i:i + 2]) for i in range(0, 5, 2)]
    assert len(keyed) == 3
