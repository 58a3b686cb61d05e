"""The ``arrays`` data set: one's own .npz / .npy files, read without pickle, checked first."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets import load_dataset
from tests.conftest import synthetic_config


def arrays(n: int, shape=(2, 5), k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float64), np.arange(n) % k


def write_npz(path: Path, n: int, **kw) -> Path:
    x, y = arrays(n, **kw)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def files(tmp_path):
    return {split: write_npz(tmp_path / f"{split}.npz", n, seed=i)
            for i, (split, n) in enumerate([("train", 30), ("val", 9), ("test", 12)])}


def test_npz_splits_are_read_as_float32_with_their_labels(files):
    splits = load_dataset("arrays", train=str(files["train"]), test=files["test"],
                          val=files["val"])
    x, y = arrays(30, seed=0)
    assert splits.input_shape == (2, 5) and splits.num_classes == 3 and splits.name == "arrays"
    assert [len(splits.train), len(splits.val), len(splits.test)] == [30, 9, 12]
    batch = splits.train.__getitems__([0, 4])
    assert batch["input"].dtype == torch.float32
    assert torch.equal(batch["input"], torch.from_numpy(x[[0, 4]].astype(np.float32)))
    assert batch["target"].tolist() == y[[0, 4]].tolist()
    assert splits.classes == ["0", "1", "2"]


def test_a_pair_of_npy_files_and_other_keys(tmp_path):
    x, y = arrays(12, shape=(1, 6))
    np.save(tmp_path / "x.npy", x.astype(np.uint8))
    np.save(tmp_path / "y.npy", y.astype(np.int32))
    np.savez(tmp_path / "test.npz", inputs=x[:4], labels=y[:4])
    splits = load_dataset("arrays", train=[str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          test=str(tmp_path / "test.npz"), input_key="inputs",
                          target_key="labels", num_classes=5)
    assert splits.val is None and splits.num_classes == 5 and len(splits.train) == 12
    assert splits.train.inputs.dtype == torch.uint8  # integers kept, converted on fetch
    assert splits.train[3]["input"].dtype == torch.float32


def _evil(marker: Path) -> object:
    class Evil:
        def __reduce__(self):  # unpickling this would create the marker file
            return (open, (str(marker), "w"))

    return Evil()


def test_a_pickle_inside_is_refused_naming_the_file_and_nothing_runs(tmp_path, files):
    marker = tmp_path / "pwned"
    # an object array inside an .npz (np.savez pickles it)
    evil_npz = tmp_path / "evil.npz"
    np.savez(evil_npz, x=np.array([_evil(marker)] * 3, dtype=object), y=np.arange(3))
    # a raw pickle under an .npz name
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps({"x": _evil(marker)}))
    # an object array as the labels of an .npy pair
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    np.save(tmp_path / "y.npy", np.array([_evil(marker)] * 3, dtype=object))
    pair = [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    for bad, where in [(evil_npz, evil_npz), (raw, raw), (pair, tmp_path / "y.npy")]:
        with pytest.raises(DataError, match="allow_pickle=False") as err:
            load_dataset("arrays", train=bad, test=files["test"])
        assert str(where) in str(err.value)
    assert not marker.exists()
    with pytest.raises(DataError, match="evil.npz"):  # the test split too
        load_dataset("arrays", train=files["train"], test=evil_npz)
    assert not marker.exists()


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((4, 3)), np.array([0.0, 1.0, 0.0, 1.0]), "integer class indices.*astype"),
        (np.zeros((4, 3)), np.array([0, 1, 0]), r"shape \(3,\).*one label per sample"),
        (np.array([[0.0, np.nan]] * 4), np.array([0, 1, 0, 1]), "NaN.*sample 0"),
        (np.full((4, 2), 1e300), np.array([0, 1, 0, 1]), "float32's range"),
        (np.zeros((4, 3)), np.array([0, -1, 0, 1]), "negative class -1"),
        (np.zeros((4, 2, 5)), np.array([1, 2, 1, 2]), r"class\(es\) \[0\].*1-based"),
        (np.zeros(4), np.array([0, 1, 0, 1]), r"\(N, \.\.\.\)"),
        (np.array([["a", "b"]] * 4), np.array([0, 1, 0, 1]), "real numbers"),
        (np.zeros((0, 3)), np.zeros(0, dtype=np.int64), "no samples"),
    ],
)
def test_bad_arrays_are_refused_naming_the_file_and_the_fix(tmp_path, files, x, y, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("arrays", train=path, test=files["test"])
    assert str(path) in str(err.value)


def test_split_mismatches_and_missing_files(tmp_path, files):
    other = write_npz(tmp_path / "other.npz", 6, shape=(3, 5))
    with pytest.raises(DataError, match=r"shape \(3, 5\).*\(2, 5\).*one shape"):
        load_dataset("arrays", train=files["train"], test=other)
    with pytest.raises(DataError, match="go up to 2 but data.num_classes is 2"):
        load_dataset("arrays", train=files["train"], test=files["test"], num_classes=2)
    with pytest.raises(DataError, match=r"no array 'inputs' \(it holds \['x', 'y'\]\).*input_key"):
        load_dataset("arrays", train=files["train"], test=files["test"], input_key="inputs")
    with pytest.raises(DataError, match="data.val file .*nope.npz does not exist"):
        load_dataset("arrays", train=files["train"], test=files["test"], val=tmp_path / "nope.npz")
    np.save(tmp_path / "single.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"holds no labels.*\[inputs.npy, labels.npy\]"):
        load_dataset("arrays", train=tmp_path / "single.npy", test=files["test"])
    with pytest.raises(ConfigError, match="a list of 3"):
        load_dataset("arrays", train=[str(files["train"])] * 3, test=files["test"])
    with pytest.raises(ConfigError, match="needs option"):
        load_dataset("arrays", train=files["train"])


def run_cfg(tmp_path, files, **data):
    section = {"name": "arrays", "train": str(files["train"]), "test": str(files["test"]),
               "batch_size": 8, **data}
    cfg = synthetic_config(tmp_path)
    cfg["data"] = section
    return parse_config(cfg)


def test_a_run_validates_on_the_explicit_val_file(tmp_path, files):
    data = api.build_data(run_cfg(tmp_path, files, val=str(files["val"])))
    assert len(data.train) == 30 and len(data.val) == 9  # nothing carved from train
    x, _ = arrays(9, seed=1)
    assert torch.equal(data.val.__getitems__([2])["input"][0],
                       torch.from_numpy(x[2].astype(np.float32)))
    carved = api.build_data(run_cfg(tmp_path, files, val_fraction=0.2))  # no val file: carve
    assert len(carved.train) == 24 and len(carved.val) == 6
    assert len(api.build_data(run_cfg(tmp_path, files, val=str(files["val"]),
                                      val_fraction=0.0)).val) == 9
    with pytest.raises(ConfigError, match="val_fraction=0.2 would carve a second one"):
        api.build_data(run_cfg(tmp_path, files, val=str(files["val"]), val_fraction=0.2))
    # a class subset applies to the validation file too
    sub = api.build_data(run_cfg(tmp_path, files, val=str(files["val"]), classes=[2, 0]))
    assert sub.val.targets.tolist() == [1 if t == 0 else 0 for t in np.arange(9) % 3 if t != 1]


def test_a_run_trains_on_arrays(tmp_path, files):
    cfg = run_cfg(tmp_path, files, val=str(files["val"]))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1,
                                                                       "latency": False})})
    summary = api.train(cfg, verbose=False).summary
    assert summary["data"] == "arrays" and 0.0 <= summary["test"]["accuracy"] <= 1.0


def test_image_folder_takes_an_explicit_validation_folder(tmp_path, image_root, image_writer):
    val_root = tmp_path / "val"
    image_writer(val_root / "cat" / "v0.png", 30)
    image_writer(val_root / "dog" / "v1.png", 60)
    splits = load_dataset("image_folder", root=image_root, val_root=str(val_root),
                          test_fraction=0.4)
    assert len(splits.val) == 2 and splits.val.classes == ["cat", "dog"]
    assert splits.val.targets.tolist() == [0, 1] and len(splits.train) + len(splits.test) == 5
    image_writer(tmp_path / "odd" / "bird" / "b.png", 1)
    with pytest.raises(DataError, match="do not match the expected classes"):
        load_dataset("image_folder", root=image_root, val_root=tmp_path / "odd")
    image_writer(tmp_path / "big" / "cat" / "c.png", 1, size=(16, 16))
    image_writer(tmp_path / "big" / "dog" / "d.png", 1, size=(16, 16))
    with pytest.raises(DataError, match="image_size"):
        load_dataset("image_folder", root=image_root, val_root=tmp_path / "big")
