"""A store is refused unless it was made from the very training samples of the run.

Every way a training split can differ at equal length: another generator seed, another
val_fraction, another order, one flipped label, one changed input value, other data options.
"""

import json
import warnings

import pytest
import torch

from kdforge import api
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.data.datasets import ArrayDataset, load_dataset
from kdforge.jobs.soft_labels import generate
from kdforge.store import SoftLabelStore, StoreError, check_run, check_samples, split_fingerprint
from tests.conftest import synthetic_config
from tests.store.builders import META, build_store, layout_of


def toy_split(n=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, 1, 6, generator=gen), torch.arange(n) % 3)


def store_of(tmp_path, dataset, data=None, name="s"):
    """A hand-made store whose meta records ``dataset``'s fingerprint and data section."""
    data = data or {"name": "toy", "options": {"seed": 0}, "val_fraction": 0.1}
    meta = {**META, "dataset": {**data, "length": len(dataset),
                                "fingerprint": split_fingerprint(dataset)}}
    build_store(tmp_path / name, layout_of(num_samples=len(dataset)), meta=meta)
    return SoftLabelStore(tmp_path / name)


def test_fingerprint_is_of_the_content_in_order():
    a = toy_split()
    fp = split_fingerprint(a)
    assert fp == split_fingerprint(toy_split()) == split_fingerprint(a, batch_size=3)
    assert fp["num_samples"] == 10 and fp["version"] == 1
    assert json.loads(json.dumps(fp)) == fp  # JSON-ready for meta.json
    other = split_fingerprint(toy_split(seed=1))
    assert other["inputs"] != fp["inputs"] and other["unordered"] != fp["unordered"]
    assert other["targets"] == fp["targets"]  # same labels, other inputs
    assert split_fingerprint(a.subset(torch.arange(9, -1, -1)))["unordered"] == fp["unordered"]


@pytest.mark.parametrize("change,how", [
    ("order", "the same samples in another order"),
    ("label", "inputs are the same but some labels differ"),
    ("input", "labels are the same but some inputs differ"),
    ("draw", "its inputs and labels differ"),
])
def test_a_split_that_differs_at_equal_length_is_refused(tmp_path, change, how):
    base = toy_split()
    store = store_of(tmp_path, base)
    section = {"name": "toy", "options": {"seed": 0}, "val_fraction": 0.1}
    check_samples(store, base, section)  # the very samples: accepted
    x, y = base.inputs.clone(), base.targets.clone()
    if change == "order":
        other = base.subset(torch.tensor([1, 0, *range(2, 10)]))
    elif change == "label":
        y[7] = (y[7] + 1) % 3  # one flipped label
        other = ArrayDataset(x, y)
    elif change == "input":
        x[4, 0, 2] += 1e-3  # one changed input value
        other = ArrayDataset(x, y)
    else:
        other = ArrayDataset(toy_split(seed=5).inputs, (torch.arange(10) + 1) % 3)
    assert len(other) == len(base)
    with pytest.raises(StoreError, match=how) as err:
        check_samples(store, other, section)
    assert "Regenerate the store" in str(err.value) and str(store.path) in str(err.value)


def test_the_message_names_the_options_and_the_fix(tmp_path):
    store = store_of(tmp_path, toy_split())
    ours = {"name": "toy", "options": {"seed": 8, "cache": False}, "val_fraction": 0.2}
    with pytest.raises(StoreError) as err:
        check_samples(store, toy_split(seed=8), ours)
    text = str(err.value)
    assert "options.seed=8 (store: 0)" in text and "options.cache=false (store: not set)" in text
    assert "val_fraction=0.2 (store: 0.1)" in text
    assert 'data: {name: "toy", seed: 0, val_fraction: 0.1}' in text  # the store's section
    # the fingerprint decides: other options that give the same samples are accepted
    check_samples(store, toy_split(), ours)


def test_a_store_without_a_fingerprint_is_checked_by_its_options_and_warns(tmp_path):
    data = toy_split()
    meta = {**META, "dataset": {"name": "toy", "length": 10, "options": {"seed": 7},
                                "val_fraction": 0.1}}
    build_store(tmp_path / "old", layout_of(), meta=meta)
    store = SoftLabelStore(tmp_path / "old")
    same = {"name": "toy", "options": {"seed": 7}, "val_fraction": 0.1}
    with pytest.warns(UserWarning, match="older kdforge.*regenerate"):
        check_samples(store, data, same)
    with pytest.raises(StoreError, match=r"another data section: options\.seed=8 \(store: 7\)"):
        check_samples(store, data, {**same, "options": {"seed": 8}})
    with pytest.raises(StoreError, match=r"val_fraction=0\.2 \(store: 0\.1\)"):
        check_samples(store, data, {**same, "val_fraction": 0.2})
    build_store(tmp_path / "v9", layout_of(), meta={**META, "dataset": {
        **meta["dataset"], "fingerprint": {"version": 9}}})
    with pytest.raises(StoreError, match="version 9"):
        check_samples(SoftLabelStore(tmp_path / "v9"), data, same)


def test_check_run_checks_length_classes_shape_and_samples(tmp_path):
    data = toy_split()
    store = store_of(tmp_path, data, data={"name": "toy", "options": {}, "val_fraction": 0.1})
    section = {"name": "toy", "options": {}, "val_fraction": 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_run(store, data, num_classes=20, input_shape=(1, 6), data=section)
    with pytest.raises(StoreError, match="11 samples"):
        check_run(store, toy_split(11), num_classes=20, input_shape=(1, 6), data=section)
    with pytest.raises(StoreError, match="classes"):
        check_run(store, data, num_classes=4, input_shape=(1, 6), data=section)
    with pytest.raises(StoreError, match="'cifar10' \\(store: 'toy'\\)"):
        check_run(store, data, num_classes=20, input_shape=(1, 6),
                  data={**section, "name": "cifar10"})
    with pytest.raises(StoreError, match="another order"):
        check_run(store, data.subset(torch.arange(9, -1, -1)), num_classes=20,
                  input_shape=(1, 6), data=section)


# --- end to end: generated stores and runs -----------------------------------------------------

def mnist1d(seed, **extra):
    return {"name": "mnist1d", "num_samples": 200, "draw_seed": seed, "val_fraction": 0.1,
            "batch_size": 36, **extra}


@pytest.fixture
def mnist1d_store(tmp_path):
    """A store generated on one MNIST-1D draw (seed 7), from a teacher trained on it."""
    t_cfg = synthetic_config(tmp_path, name="t", student={"name": "mlp"}, train={"epochs": 1})
    t_cfg["data"] = mnist1d(7)
    teacher = api.train(parse_config(t_cfg), verbose=False).run_dir
    cfg = parse_config({"name": "s7", "output_dir": str(tmp_path / "stores"),
                        "data": mnist1d(7), "teacher": {"run": str(teacher)}, "device": "cpu",
                        "view": {"name": "consistent", "scale": [0.8, 1.0]},
                        "store": {"views_per_sample": 2, "top_k": 3}}, kind=SoftLabelConfig)
    return generate(cfg, verbose=False)["path"], teacher


def test_a_store_of_another_mnist1d_draw_is_refused_before_training(tmp_path, mnist1d_store):
    path, teacher = mnist1d_store
    store = SoftLabelStore(path)
    recorded = store.meta["dataset"]
    run_data = api.build_data(parse_config({**synthetic_config(tmp_path), "data": mnist1d(7)}))
    assert recorded["fingerprint"] == split_fingerprint(run_data.train)
    assert recorded["options"] == {"num_samples": 200, "draw_seed": 7}

    def run(name, data):
        cfg = synthetic_config(tmp_path, name=name, teacher={"store": path},
                               losses=[{"name": "kd", "T": 1}], train={"epochs": 1})
        cfg["data"] = data
        return api.train(parse_config(cfg), verbose=False)

    with pytest.raises(StoreError) as err:  # the reported bug: data.draw_seed=8, same size
        run("seed8", mnist1d(8))
    text = str(err.value)
    assert "options.draw_seed=8 (store: 7)" in text and "other training samples" in text
    assert not (tmp_path / "runs" / "seed8" / "summary.json").exists()
    # another val_fraction (and size) with the same training length: 240 * 0.8 * 0.75 = 144
    with pytest.raises(StoreError, match=r"other training samples.*options\.num_samples=240 "
                       r"\(store: 200\), val_fraction=0\.25 \(store: 0\.1\)"):
        run("val", {**mnist1d(7, num_samples=240), "val_fraction": 0.25})
    result = run("seed7", mnist1d(7, num_workers=0))  # the store's own samples: trains
    assert 0 <= result.summary["test"]["agreement"] <= 1


def test_views_from_a_store_of_other_samples_is_refused(tmp_path, mnist1d_store):
    path, teacher = mnist1d_store
    cfg = parse_config({"name": "again", "output_dir": str(tmp_path / "stores"),
                        "data": mnist1d(8), "teacher": {"run": str(teacher)}, "device": "cpu",
                        "view": {"name": "consistent", "scale": [0.8, 1.0]},
                        "store": {"views_per_sample": 2, "top_k": 3, "views_from": path}},
                       kind=SoftLabelConfig)
    with pytest.raises(StoreError, match="options.draw_seed=8 \\(store: 7\\)"):
        generate(cfg, verbose=False)


def test_the_fingerprint_of_a_real_split_tells_draws_apart():
    a = load_dataset("mnist1d", num_samples=200, draw_seed=7).train
    b = load_dataset("mnist1d", num_samples=200, draw_seed=8).train
    assert len(a) == len(b)
    fa, fb = split_fingerprint(a), split_fingerprint(b)
    assert fa["inputs"] != fb["inputs"] and fa["unordered"] != fb["unordered"]
