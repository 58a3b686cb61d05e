"""FKD end to end: label views once, replay them exactly, train without the teacher."""

import pytest
import torch

from kdforge import StoreError, api
from kdforge.cli import main
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.core.outputs import Batch
from kdforge.soft_labels import generate
from kdforge.teachers.store import SoftLabelStore
from kdforge.teachers.stored import StoreView
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
