"""The ``cifar10`` and ``cifar100`` loaders: the official python files, read safely."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits

CIFAR10_SOURCE = (
    "Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images (CIFAR-10); "
    "read from the official python files"
)
CIFAR100_SOURCE = (
    "Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images (CIFAR-100); "
    "read from the official python files"
)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds dicts, lists, strings, numbers and numpy arrays.

    The CIFAR files are pickles; refusing every other global means a tampered file cannot
    run code when loaded.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
            ("copy_reg", "_reconstructor"),
            ("copyreg", "_reconstructor"),
            ("__builtin__", "object"),
            ("builtins", "object"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (Python 2 str/bytes keys decoded)."""
    try:
        with open(path, "rb") as handle:
            # latin1 is how numpy arrays pickled by Python 2 must be read.
            obj = _CifarUnpickler(handle, encoding="latin1").load()
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
    ) as err:
        raise DataError(
            f"cannot read CIFAR file {path}: {err}; it is not a file of the official python "
            f"version: re-extract the archive from {_CIFAR_URL}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _find_cifar_dir(
    root: str | os.PathLike[str], subdir: str, files: Sequence[str], title: str, archive: str
) -> Path:
    """The folder holding all ``files``: ``root`` itself or ``root/subdir``."""
    base = Path(root).expanduser()
    candidates = [base, base / subdir]
    for folder in candidates:
        if all((folder / f).is_file() for f in files):
            return folder
    best = max(candidates, key=lambda c: sum((c / f).is_file() for f in files))
    missing = [f for f in files if not (best / f).is_file()]
    raise DataError(
        f"{title} files not found: looked in {base} and {base / subdir}; missing in "
        f"{best}: {', '.join(missing)}. Expected the official python version, a folder "
        f"'{subdir}' holding {', '.join(files)}. kdforge never downloads data sets: download "
        f"{archive} from {_CIFAR_URL}, extract it and pass root= pointing to the extracted "
        f"'{subdir}' folder or to its parent"
    )


def _cifar_arrays(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) from one CIFAR batch file."""
    batch = _read_cifar_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(
            f"CIFAR file {path} has keys {sorted(batch)}; expected 'data' and {label_key!r}"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"CIFAR file {path}: 'data' must be uint8 of shape (N, 3072), got "
            f"{data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR file {path}: {len(labels)} labels for {data.shape[0]} images")
    # Each row: 1024 red, then 1024 green, then 1024 blue values, each a 32x32 row-major plane.
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return images, torch.from_numpy(labels)


def _label_names(path: Path, key: str) -> list[str]:
    meta = _read_cifar_pickle(path)
    if key not in meta:
        raise DataError(f"CIFAR meta file {path} has no {key!r} (keys: {sorted(meta)})")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _cifar_dataset(images: Tensor, labels: Tensor, classes: list[str], path: Path) -> ArrayDataset:
    if labels.numel() and int(labels.max()) >= len(classes):
        raise DataError(
            f"CIFAR labels in {path} go up to {int(labels.max())} but the meta file names "
            f"{len(classes)} classes"
        )
    return ArrayDataset(images, labels, classes, scale=1.0 / 255.0)


@DATASETS.register("cifar10", source=CIFAR10_SOURCE)
def load_cifar10(root: str | os.PathLike[str]) -> DataSplits:
    """CIFAR-10 (50000 train / 10000 test 32x32 colour images, 10 classes) from local files.

    ``root`` is the extracted ``cifar-10-batches-py`` folder or its parent. Pixels are
    kept as uint8 in memory and scaled to [0, 1] float32 when fetched. Never downloads.
    """
    train_files = [f"data_batch_{k}" for k in range(1, 6)]
    files = [*train_files, "test_batch", "batches.meta"]
    folder = _find_cifar_dir(
        root, "cifar-10-batches-py", files, "CIFAR-10", "cifar-10-python.tar.gz"
    )
    classes = _label_names(folder / "batches.meta", "label_names")
    parts = [_cifar_arrays(folder / f, "labels") for f in train_files]
    train = _cifar_dataset(
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes, folder
    )
    test = _cifar_dataset(*_cifar_arrays(folder / "test_batch", "labels"), classes, folder)
    return DataSplits(train, test, len(classes), (3, 32, 32), "cifar10", CIFAR10_SOURCE)


@DATASETS.register("cifar100", source=CIFAR100_SOURCE)
def load_cifar100(root: str | os.PathLike[str], label_type: str = "fine") -> DataSplits:
    """CIFAR-100 (50000 train / 10000 test 32x32 colour images) from local files.

    ``root`` is the extracted ``cifar-100-python`` folder or its parent. ``label_type``
    ``"fine"`` gives the 100 classes, ``"coarse"`` the 20 superclasses. Pixels are kept as
    uint8 and scaled to [0, 1] float32 when fetched. Never downloads.
    """
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    folder = _find_cifar_dir(
        root, "cifar-100-python", ["train", "test", "meta"], "CIFAR-100", "cifar-100-python.tar.gz"
    )
    classes = _label_names(folder / "meta", f"{label_type}_label_names")
    key = f"{label_type}_labels"
    train = _cifar_dataset(*_cifar_arrays(folder / "train", key), classes, folder)
    test = _cifar_dataset(*_cifar_arrays(folder / "test", key), classes, folder)
    return DataSplits(train, test, len(classes), (3, 32, 32), "cifar100", CIFAR100_SOURCE)
