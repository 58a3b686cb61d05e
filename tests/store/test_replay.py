"""Training from a store: replay in the loader (StoreSource), checks before training."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from kdforge import ConfigError, StoreError, api
from kdforge.config import parse_config
from kdforge.data.loaders import to_batch
from kdforge.engine.checkpoint import CHECKPOINT
from kdforge.jobs.soft_labels import generate
from kdforge.models.runs import WEIGHTS
from kdforge.store import (
    EpochBatch,
    EpochBatchSampler,
    SoftLabelStore,
    StoreSamples,
    StoreView,
    epoch_views,
)
from kdforge.teachers import StoredTeacher
from tests.conftest import synthetic_config
from tests.store.fixtures import fm_view, store_config


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
    assert not (tmp_path / "runs" / "corrupt" / CHECKPOINT).exists()
    with pytest.raises(Exception, match="view"):
        api.train(parse_config({**cfg, "name": "v", "view": {"name": "consistent"}}),
                  verbose=False)


def test_training_from_a_function_matching_store_is_deterministic(tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher, view=fm_view("cutmix")), verbose=False)

    def run(name):
        cfg = synthetic_config(tmp_path, name=name, student={"name": "mlp", "hidden": [16]},
                               teacher={"store": stats["path"], "repeats": 2},
                               losses=[{"name": "kd", "T": 1}])
        return api.train(parse_config(cfg), verbose=False)

    a, b = run("fm-a"), run("fm-b")
    assert a.summary["teacher_params"] == 0  # the teacher never ran
    wa, wb = load_file(a.run_dir / WEIGHTS), load_file(b.run_dir / WEIGHTS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert math.isfinite(a.summary["val"]["nll"])


# --- the loader path: StoreSamples reads the records next to the data --------------------------


def test_store_samples_load_the_epochs_views_and_replay_what_the_teacher_labelled(
        tmp_path, teacher):
    stats = generate(store_config(tmp_path, teacher), verbose=False)
    store = SoftLabelStore(stats["path"])
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    view = StoreView(store, (1, 8, 8), repeats=2, fill="smooth")
    samples = StoreSamples(view, data.train, seed=5)
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
        return load_file(run.run_dir / WEIGHTS)

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
