"""load_dataset, the registry, digits and synthetic."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kdforge.core.errors import ConfigError
from kdforge.data import DATASETS, ArrayDataset, DataSplits, load_dataset


def test_registry_has_sources() -> None:
    assert {"digits", "mnist1d", "synthetic", "image_folder", "cifar10", "cifar100"} <= set(
        DATASETS.names()
    )
    for entry in DATASETS.entries():
        assert entry.source, f"{entry.name} has no source citation"
        assert entry.summary
    assert "Alpaydin" in DATASETS.entry("digits").source
    assert "Greydanus" in DATASETS.entry("mnist1d").source
    assert DATASETS.entry("synthetic").source == "generated"


def test_unknown_dataset_name_suggests_close_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("digit")
    message = str(err.value)
    assert "unknown dataset 'digit'" in message and "'digits'" in message


def test_unknown_option_lists_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", test_frac=0.3)
    message = str(err.value)
    assert "'test_frac'" in message
    assert "test_fraction" in message and "split_seed" in message


def test_missing_required_option() -> None:
    with pytest.raises(ConfigError, match="needs option.*'root'"):
        load_dataset("cifar10")


def test_bad_option_values() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.5)
    with pytest.raises(ConfigError, match="input_shape"):
        load_dataset("synthetic", input_shape=(0, 3))
    with pytest.raises(ConfigError, match="multiple of 10"):
        load_dataset("mnist1d", num_samples=55)


def test_digits_shapes_and_ranges() -> None:
    splits = load_dataset("digits")
    assert isinstance(splits, DataSplits)
    assert splits.name == "digits" and "Alpaydin" in splits.source
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8)
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == round(1797 * 0.2)
    for ds in (splits.train, splits.test):
        assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
        assert ds.inputs.dtype == torch.float32
        assert float(ds.inputs.min()) == 0.0 and float(ds.inputs.max()) == 1.0
    # stratified: every class is in the test set in proportion (about 36 each)
    counts = torch.bincount(splits.test.targets, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38


def test_digits_test_split_ignores_run_seeds() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    first = load_dataset("digits")
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    second = load_dataset("digits")
    assert torch.equal(first.test.inputs, second.test.inputs)
    assert torch.equal(first.test.targets, second.test.targets)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(first.test.inputs, other.test.inputs)


def test_synthetic_is_deterministic() -> None:
    a = load_dataset("synthetic")
    b = load_dataset("synthetic", draw_seed=0)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 4 and a.source == "generated"
    assert len(a.train) == 256 and len(a.test) == 128
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert torch.equal(a.test.targets, b.test.targets)
    c = load_dataset("synthetic", draw_seed=1)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    # balanced classes, and the test set does not depend on the training set size
    assert torch.bincount(a.train.targets).tolist() == [64] * 4
    d = load_dataset("synthetic", num_train=100)
    assert torch.equal(a.test.inputs, d.test.inputs)


@pytest.mark.parametrize("shape", [(16,), (2, 12), [1, 8, 8]])
def test_synthetic_any_shape(shape: tuple[int, ...]) -> None:
    splits = load_dataset("synthetic", input_shape=shape, num_train=12, num_test=6)
    assert splits.input_shape == tuple(shape)
    assert splits.train.__getitems__([0, 1])["input"].shape == (2, *shape)


def test_synthetic_is_learnable_by_a_linear_model() -> None:
    splits = load_dataset("synthetic")
    assert isinstance(splits.train, ArrayDataset)
    x = splits.train.inputs.flatten(1)
    y = splits.train.targets
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], splits.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = model(splits.test.inputs.flatten(1)).argmax(1)
    accuracy = (pred == splits.test.targets).float().mean().item()
    assert accuracy > 0.9
