"""ArrayDataset, the batch contract, split_train_val and mean_std."""

from __future__ import annotations

import pytest
import torch

from kdforge.core.errors import ConfigError, DataError
from kdforge.data import ArrayDataset, LabeledDataset, mean_std, split_train_val


def make(n: int = 20, num_classes: int = 4, shape: tuple[int, ...] = (2, 3)) -> ArrayDataset:
    inputs = torch.arange(n * 6, dtype=torch.float32).reshape(n, *shape)
    return ArrayDataset(inputs, torch.arange(n) % num_classes)


def test_item_contract() -> None:
    ds = make()
    assert isinstance(ds, LabeledDataset)
    assert len(ds) == 20 and ds.num_classes == 4 and ds.input_shape == (2, 3)
    assert ds.classes == ["0", "1", "2", "3"]
    item = ds[5]
    assert set(item) == {"input", "target", "index"}
    assert item["input"].dtype == torch.float32 and item["input"].shape == (2, 3)
    assert item["target"].dtype == torch.int64 and item["target"].ndim == 0
    assert int(item["target"]) == 1 and item["index"] == 5
    assert ds[-1]["index"] == 19
    with pytest.raises(IndexError):
        ds[20]
    # an item is a copy: editing it must not change the data set
    item["input"].zero_()
    assert ds[5]["input"].sum() > 0


def test_getitems_equals_stacked_getitem() -> None:
    ds = make()
    indices = [3, 0, 19, 3, 7]
    batch = ds.__getitems__(indices)
    items = [ds[i] for i in indices]
    assert torch.equal(batch["input"], torch.stack([it["input"] for it in items]))
    assert torch.equal(batch["target"], torch.stack([it["target"] for it in items]))
    assert batch["index"].dtype == torch.int64
    assert batch["index"].tolist() == [it["index"] for it in items]
    assert ds.__getitems__([-1])["index"].tolist() == [19]
    with pytest.raises(IndexError):
        ds.__getitems__([0, 99])
    empty = ds.__getitems__([])
    assert empty["input"].shape == (0, 2, 3) and empty["target"].shape == (0,)


def test_uint8_storage_is_scaled_on_fetch() -> None:
    raw = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8)
    ds = ArrayDataset(raw, [0, 1], ["a", "b"], scale=1 / 255)
    assert ds.inputs.dtype == torch.uint8  # stays compact in memory
    assert torch.allclose(ds[0]["input"], torch.tensor([0.0, 1.0]))
    batch = ds.__getitems__([1, 0])
    assert batch["input"].dtype == torch.float32
    assert torch.allclose(batch["input"], torch.tensor([[0.2, 0.4], [0.0, 1.0]]))
    sub = ds.subset([1])
    assert sub.inputs.dtype == torch.uint8 and sub.scale == ds.scale


def test_subset_copies_rows_and_reindexes() -> None:
    ds = make()
    sub = ds.subset([4, 9, 2])
    assert len(sub) == 3 and sub.classes == ds.classes
    assert torch.equal(sub[1]["input"], ds[9]["input"])
    assert sub[1]["index"] == 1
    assert sub.__getitems__([0, 2])["index"].tolist() == [0, 2]
    sub.inputs.zero_()
    assert ds[4]["input"].sum() > 0  # rows were copied


def test_constructor_validation() -> None:
    with pytest.raises(DataError, match="shape"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="class names"):
        ArrayDataset(torch.zeros(3, 2), [0, 1, 5], ["a", "b"])
    with pytest.raises(DataError, match="integer"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(3))
    ds = ArrayDataset(torch.zeros(3, 2, dtype=torch.float64), [0, 1, 1])
    assert ds.inputs.dtype == torch.float32


def test_split_train_val_is_stratified_and_deterministic() -> None:
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    ds = ArrayDataset(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), targets)
    train, val = split_train_val(ds, 0.2, seed=1)
    assert val is not None and len(train) == 80 and len(val) == 20
    assert torch.bincount(val.targets).tolist() == [10, 6, 4]
    assert torch.bincount(train.targets).tolist() == [40, 24, 16]
    # disjoint, covering, and the same again with the same seed
    rows = torch.cat([train.inputs, val.inputs])
    assert torch.equal(rows.sort(dim=0).values, ds.inputs.sort(dim=0).values)
    train2, val2 = split_train_val(ds, 0.2, seed=1)
    assert torch.equal(val.inputs, val2.inputs) and torch.equal(train.inputs, train2.inputs)
    _, val3 = split_train_val(ds, 0.2, seed=2)
    assert not torch.equal(val.inputs, val3.inputs)
    # the global RNG plays no part
    torch.manual_seed(123)
    _, val4 = split_train_val(ds, 0.2, seed=1)
    assert torch.equal(val.inputs, val4.inputs)


def test_split_train_val_edge_cases() -> None:
    ds = make()
    assert split_train_val(ds, 0.0, seed=0) == (ds, None)
    lonely = ArrayDataset(torch.zeros(5, 1), [0, 0, 0, 0, 1], ["many", "single"])
    with pytest.raises(ConfigError, match="no training samples.*'single'"):
        split_train_val(lonely, 0.6, seed=0)
    train, val = split_train_val(lonely, 0.4, seed=0)  # 2 held out, both from 'many'
    assert (
        val is not None and val.targets.tolist() == [0, 0] and train.targets.tolist() == [0, 0, 1]
    )
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        split_train_val(ds, 1.0, seed=0)
    with pytest.raises(ConfigError, match="no samples"):
        split_train_val(ds, 0.001, seed=0)


def test_mean_std_per_channel() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 4, 4, generator=gen) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    ds = ArrayDataset(x, torch.zeros(50, dtype=torch.int64))
    mean, std = mean_std(ds, batch_size=7)
    assert mean.shape == (3,) and std.shape == (3,)
    ref = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean, ref.mean(1), atol=1e-5)
    assert torch.allclose(std, ref.std(1, unbiased=False), atol=1e-5)
    flat = ArrayDataset(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), [0, 1])
    mean, std = mean_std(flat)
    assert mean.tolist() == [4.0] and std.shape == (1,)
