"""The ``mnist1d`` loader: MNIST-1D signals generated locally and cached."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import random
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits, _atomic_savez, _positive_int, cache_dir
from kdforge.data.datasets.options import DRAW_SEED_REASON, renamed_options

MNIST1D_SOURCE = (
    "Greydanus 2020, Scaling down deep learning (MNIST-1D), arXiv:2011.14439; generated "
    "locally with the mnist1d package"
)


@contextlib.contextmanager
def _preserved_global_rngs() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global RNG states on exit.

    mnist1d's generator calls ``random.seed`` and ``np.random.seed``; without this, loading
    the data set would silently reseed the caller's run.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test", "t")


def _mnist1d_generate(args_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        import mnist1d.data as m1d
    except ImportError as err:
        raise DataError(
            "dataset 'mnist1d' needs the mnist1d package: pip install 'kdforge[data]'"
        ) from err
    args = m1d.get_dataset_args()
    for key, value in args_dict.items():
        setattr(args, key, value)
    with _preserved_global_rngs():
        data = m1d.make_dataset(args)  # generates locally; get_dataset could download
    return {k: np.asarray(data[k]) for k in _MNIST1D_KEYS}


def _mnist1d_read_cache(
    path: Path, n_train: int, n_test: int, length: int
) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing, corrupt or inconsistent."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (
        arrays["x"].shape == (n_train, length)
        and arrays["x_test"].shape == (n_test, length)
        and arrays["y"].shape == (n_train,)
        and arrays["y_test"].shape == (n_test,)
    )
    return arrays if ok else None


@DATASETS.register("mnist1d", source=MNIST1D_SOURCE)
@renamed_options({"seed": "draw_seed"}, reason=DRAW_SEED_REASON)
def load_mnist1d(num_samples: int = 5000, draw_seed: int = 42, cache: bool = True) -> DataSplits:
    """MNIST-1D: 1-D signals of length 40 in 10 classes (default 4000 train / 1000 test).

    Generated with ``mnist1d.data.make_dataset`` using the paper's settings (80/20 split,
    seed 42); the values are used as generated (make_dataset already centres them and
    scales them to unit standard deviation over the whole set). The global RNG states are
    restored after generation.

    Options:
        num_samples: train + test signals; a multiple of 10 (the generator makes
            ``num_samples // 10`` per class), 80% train, 20% test.
        draw_seed: the seed of the generator that draws the signals (the mnist1d
            package's ``seed``; formerly this option's name too). Another value is
            another data set; the run's top-level ``seed`` never changes the samples.
        cache: keep the arrays as an .npz under :func:`cache_dir`, keyed by the options
            (file names as before the rename); false regenerates every time.
    """
    num_samples = _positive_int("num_samples", num_samples, minimum=10)
    if num_samples % 10:
        raise ConfigError(
            f"num_samples must be a multiple of 10 (10 classes, equal counts), got {num_samples}"
        )
    seed = _positive_int("draw_seed", draw_seed, minimum=0)
    # "seed" is the mnist1d package's name for it; the cache key (and file name) keep it.
    args_dict: dict[str, Any] = {"num_samples": num_samples, "seed": seed}
    train_split, length = 0.8, 40
    n_train = int(num_samples * train_split)
    n_test = num_samples - n_train

    arrays = None
    path = None
    if cache:
        try:
            version = importlib.metadata.version("mnist1d")
        except importlib.metadata.PackageNotFoundError:
            version = ""
        key_src = json.dumps(
            {**args_dict, "train_split": train_split, "mnist1d": version}, sort_keys=True
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
        path = cache_dir() / "mnist1d" / f"mnist1d_n{num_samples}_s{seed}_{key}.npz"
        arrays = _mnist1d_read_cache(path, n_train, n_test, length)
    if arrays is None:
        arrays = _mnist1d_generate(args_dict)
        if path is not None:
            try:
                _atomic_savez(path, arrays)
            except OSError as err:
                warnings.warn(f"could not cache mnist1d at {path}: {err}", stacklevel=2)

    classes = [str(k) for k in range(10)]
    train = ArrayDataset(
        torch.from_numpy(arrays["x"].astype(np.float32)).unsqueeze(1), arrays["y"], classes
    )
    test = ArrayDataset(
        torch.from_numpy(arrays["x_test"].astype(np.float32)).unsqueeze(1),
        arrays["y_test"],
        classes,
    )
    return DataSplits(train, test, 10, (1, length), "mnist1d", MNIST1D_SOURCE)
