"""``data.normalize``: per-channel input normalisation for every split, and the store's check."""

from __future__ import annotations

import pytest
import torch

from kdforge import api
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.core.errors import ConfigError, DataError, StoreError
from kdforge.data.datasets import (
    NormalizedDataset,
    load_dataset,
    mean_std,
    normalize_splits,
    split_train_val,
)
from kdforge.jobs.soft_labels import generate
from kdforge.store import split_fingerprint
from tests.conftest import synthetic_config


def data_of(tmp_path, normalize, **data):
    section = {"input_shape": [3, 4, 4], "normalize": normalize, **data}
    return api.build_data(parse_config(synthetic_config(tmp_path, data=section)))


def everything(ds):
    return ds.__getitems__(range(len(ds)))["input"]


def test_auto_uses_the_training_sets_statistics_for_every_split(tmp_path):
    raw = load_dataset("synthetic", input_shape=[3, 4, 4], num_train=128, num_test=64,
                       num_classes=4)
    mean, std = mean_std(raw.train)
    data = data_of(tmp_path, "auto")
    full = everything(data.splits.train)  # the whole training set: mean 0, std 1 per channel
    torch.testing.assert_close(full.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(full.std(dim=(0, 2, 3), unbiased=False), torch.ones(3),
                               atol=1e-5, rtol=0)
    expected = (everything(raw.test) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(everything(data.test), expected)
    assert len(data.train) + len(data.val) == 128  # the carve is unchanged
    assert torch.equal(data.val.targets, data_of(tmp_path, None).val.targets)
    # one sample and a batch agree, and a subset stays normalised
    assert torch.equal(data.train[3]["input"], data.train.__getitems__([3])["input"][0])
    assert torch.equal(data.train.subset([3])[0]["input"], data.train[3]["input"])


def test_given_mean_and_std_per_channel(tmp_path):
    data = data_of(tmp_path, {"mean": [0.5, 0.0, -1.0], "std": [2.0, 1.0, 0.5]})
    raw = data_of(tmp_path, None)
    x, y = everything(data.test), everything(raw.test)
    torch.testing.assert_close(x[:, 0], (y[:, 0] - 0.5) / 2.0)
    torch.testing.assert_close(x[:, 2], (y[:, 2] + 1.0) / 0.5)
    signals = normalize_splits(load_dataset("synthetic", input_shape=[40]), {"mean": [1.0],
                                                                             "std": [2.0]})
    assert signals.train[0]["input"].shape == (40,)  # (D,) samples: one channel


def test_a_wrong_channel_count_names_the_data_sets(tmp_path):
    with pytest.raises(ConfigError, match=r"normalize.mean has 3 value\(s\) but dataset "
                                          r"'digits' has 1 channel\(s\)"):
        cfg = synthetic_config(tmp_path)
        cfg["data"] = {"name": "digits", "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}}
        api.build_data(parse_config(cfg))


@pytest.mark.parametrize("normalize, message", [
    ({"mean": [0.0, 1.0], "std": [1.0]}, "2 means but 1 stds"),
    ({"mean": [0.0], "std": [0.0]}, "stds must be positive"),
    ({"mean": [0.0]}, "std"),
    ("standard", "normalize"),
])
def test_bad_normalize_values_are_config_errors(tmp_path, normalize, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(synthetic_config(tmp_path, data={"normalize": normalize}))


def test_a_constant_channel_is_only_centred():
    base = load_dataset("synthetic", input_shape=[2, 3]).train
    flat = NormalizedDataset(base, torch.zeros(2), torch.ones(2))
    assert torch.equal(everything(flat), everything(base))
    splits = normalize_splits(load_dataset("digits"), "auto")  # digits has constant pixels
    assert bool(torch.isfinite(everything(splits.train)).all())
    with pytest.raises(ConfigError, match="3 means and 3 stds for samples of 2 channel"):
        NormalizedDataset(base, torch.zeros(3), torch.ones(3))
    with pytest.raises(DataError):
        mean_std(base.subset([]))


def test_a_store_checks_the_normalised_samples(tmp_path):
    """A run without normalize keeps the fingerprint it always had; a store made with one
    normalisation is refused by a run with another, and accepted by a run with the same."""
    raw = api.build_data(parse_config(synthetic_config(tmp_path)))
    before, _ = split_train_val(load_dataset("synthetic", num_train=128, num_test=64,
                                             num_classes=4).train, 0.25, api.VAL_SPLIT_SEED)
    assert split_fingerprint(raw.train) == split_fingerprint(before)  # as before normalize
    teacher = api.train(parse_config(synthetic_config(
        tmp_path, name="t", data={"normalize": "auto"}, train={"epochs": 1, "latency": False})),
        verbose=False).run_dir
    store_cfg = parse_config({
        "name": "s", "output_dir": str(tmp_path / "stores"), "device": "cpu",
        "data": {**synthetic_config(tmp_path)["data"], "normalize": "auto"},
        "teacher": {"run": str(teacher)}, "store": {"views_per_sample": 1, "top_k": 2}},
        kind=SoftLabelConfig)
    path = generate(store_cfg, verbose=False)["path"]

    def run(name, normalize):
        cfg = synthetic_config(tmp_path, name=name, teacher={"store": path},
                               losses=[{"name": "kd", "T": 1}],
                               data={"normalize": normalize}, train={"epochs": 1,
                                                                     "latency": False})
        return api.train(parse_config(cfg), verbose=False)

    with pytest.raises(StoreError, match="other training samples"):
        run("plain", None)
    assert run("same", "auto").summary["epochs"] == 1
