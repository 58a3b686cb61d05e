"""MNIST-1D: shapes, global RNG states restored, the .npz cache."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from kdforge.data import load_dataset


@pytest.fixture(scope="module")
def default_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the module, so the default 5000-sample set is generated once."""
    cache = tmp_path_factory.mktemp("mnist1d_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDFORGE_CACHE", str(cache))
        yield cache


def rng_snapshot() -> tuple[object, tuple, torch.Tensor]:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def assert_same_states(before: tuple, after: tuple) -> None:
    assert before[0] == after[0], "random's state changed"
    np_before, np_after = before[1], after[1]
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:], "numpy's global state changed"
    assert torch.equal(before[2], after[2]), "torch's state changed"


def test_default_shapes(default_cache: Path) -> None:
    splits = load_dataset("mnist1d")
    assert splits.name == "mnist1d" and "Greydanus" in splits.source
    assert len(splits.train) == 4000 and len(splits.test) == 1000
    assert splits.input_shape == (1, 40) and splits.num_classes == 10
    assert splits.train.inputs.dtype == torch.float32 and splits.train.input_shape == (1, 40)
    assert splits.train.targets.dtype == torch.int64
    assert sorted(splits.train.targets.unique().tolist()) == list(range(10))
    batch = splits.test.__getitems__([0, 1, 2])
    assert batch["input"].shape == (3, 1, 40)


def test_values_are_make_dataset_output_unchanged(default_cache: Path) -> None:
    splits = load_dataset("mnist1d")
    state = rng_snapshot()
    raw = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    random.setstate(state[0])
    np.random.set_state(state[1])
    assert np.allclose(splits.train.inputs[:, 0].numpy(), raw["x"], atol=1e-6)
    assert np.array_equal(splits.test.targets.numpy(), raw["y_test"])


def test_global_rng_states_are_restored(kdforge_cache: Path) -> None:
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    random.random()
    np.random.rand()
    torch.rand(1)
    # mnist1d really does reseed the global generators ...
    before = rng_snapshot()
    mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    assert random.getstate() != before[0]
    assert not np.array_equal(np.random.get_state()[1], before[1][1])
    random.setstate(before[0])
    np.random.set_state(before[1])
    # ... but kdforge puts them back when it generates (fresh cache: no cache hit)
    load_dataset("mnist1d", num_samples=100, draw_seed=3)
    assert_same_states(before, rng_snapshot())
    load_dataset("mnist1d", num_samples=100, draw_seed=3, cache=False)
    assert_same_states(before, rng_snapshot())


def test_cache_hit_returns_identical_arrays(
    kdforge_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset("mnist1d", num_samples=200, draw_seed=5)
    files = list((kdforge_cache / "mnist1d").glob("*.npz"))
    assert len(files) == 1 and "n200_s5" in files[0].name
    assert not list((kdforge_cache / "mnist1d").glob("*.tmp"))

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("make_dataset called despite a cached copy")

    with monkeypatch.context() as mp:
        mp.setattr(mnist1d.data, "make_dataset", no_generation)
        second = load_dataset("mnist1d", num_samples=200, draw_seed=5)
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.test.targets, second.test.targets)
    # other options are other cache entries
    other = load_dataset("mnist1d", num_samples=200, draw_seed=6)
    assert not torch.equal(first.train.inputs, other.train.inputs)
    assert len(list((kdforge_cache / "mnist1d").glob("*.npz"))) == 2


@pytest.mark.parametrize("garbage", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_regenerated(kdforge_cache: Path, garbage: bytes) -> None:
    first = load_dataset("mnist1d", num_samples=100, draw_seed=1)
    (path,) = (kdforge_cache / "mnist1d").glob("*.npz")
    path.write_bytes(garbage)
    again = load_dataset("mnist1d", num_samples=100, draw_seed=1)
    assert torch.equal(first.train.inputs, again.train.inputs)
    with np.load(path) as npz:  # and the cache file was rewritten
        assert npz["x"].shape == (80, 40)


def test_wrong_shaped_cache_is_regenerated(kdforge_cache: Path) -> None:
    first = load_dataset("mnist1d", num_samples=100, draw_seed=1)
    (path,) = (kdforge_cache / "mnist1d").glob("*.npz")
    np.savez(
        path,
        x=np.zeros((3, 40)),
        y=np.zeros(3),
        x_test=np.zeros((1, 40)),
        y_test=np.zeros(1),
        t=np.zeros(40),
    )
    again = load_dataset("mnist1d", num_samples=100, draw_seed=1)
    assert torch.equal(first.train.inputs, again.train.inputs)
