"""FKD end to end: label views once (kdforge soft-labels), replay them exactly."""

import pytest
import torch

from kdforge import ConfigError, StoreError, api
from kdforge.cli import main
from kdforge.config import parse_config
from kdforge.core.outputs import Batch
from kdforge.jobs.soft_labels import generate
from kdforge.store import SoftLabelStore, StoreView
from tests.conftest import synthetic_config
from tests.store.fixtures import check_mix_from_the_math, fm_view, replay, store_config


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
