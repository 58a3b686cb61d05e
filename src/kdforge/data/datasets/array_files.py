"""The ``arrays`` loader: one's own NumPy arrays (``.npz``, or a pair of ``.npy`` files).

Each split is a file (or a pair of files) on disk::

    data:
      name: arrays
      train: train.npz                   # keys x (inputs) and y (labels)
      val: val.npz                       # optional: an explicit validation set
      test: [x_test.npy, y_test.npy]     # or a pair: inputs, then labels

Files are read with ``np.load(allow_pickle=False)`` only: a file holding an object array
or a pickle is refused with a :class:`~kdforge.core.errors.DataError` naming it, before
anything in it can run. The arrays are checked before training, each problem named with
its file and the fix: inputs ``(N, ...)`` of real numbers (floats finite), labels ``(N,)``
integer class indices ``0..K-1``, the same sample shape in every split.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits, _positive_int

ARRAYS_SOURCE = "local NumPy arrays (.npz, or a pair of .npy files), read without pickle"

PathOption = str | os.PathLike[str]
_PICKLE_HINT = (
    "kdforge reads arrays with np.load(allow_pickle=False) so that a file cannot run code; "
    "save plain numeric arrays (np.savez(path, x=inputs, y=labels) with numeric dtypes, "
    "not object arrays or pickles)"
)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays and pickles are refused here
        raise DataError(f"cannot read {path}: {err}; {_PICKLE_HINT}") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}; is it a .npy file (np.save)?") from None


def _load_npz(path: Path, input_key: str, target_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single array, not an .npz archive of inputs and "
                            "labels; save it with np.savez(path, x=inputs, y=labels)")
        with loaded as npz:
            missing = [k for k in (input_key, target_key) if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path} has no array {missing[0]!r} (it holds {sorted(npz.files)}); "
                    "name its keys with data.input_key and data.target_key"
                )
            return npz[input_key], npz[target_key]
    except ValueError as err:  # object arrays and pickles are refused here
        raise DataError(f"cannot read {path}: {err}; {_PICKLE_HINT}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: {err}; is it an .npz file (np.savez)?") from None


def _stored(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked arrays in native byte order, in dtypes torch holds: float32 inputs (uint8
    inputs kept, to save memory; other integers as int64) and int64 labels."""
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
    elif x.dtype != np.uint8:
        x = x.astype(np.int64)
    return np.ascontiguousarray(x), np.ascontiguousarray(y.astype(np.int64))


def _existing(option: str, value: PathOption) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise DataError(f"data.{option} file {path} does not exist; point data.{option} at an "
                        ".npz file (or a pair of .npy files: [inputs.npy, labels.npy])")
    return path


def _read_split(option: str, value: PathOption | Sequence[PathOption], input_key: str,
                target_key: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs, labels, the file(s) named in messages) of one split option."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"data.{option} must be an .npz file or a pair [inputs.npy, "
                              f"labels.npy], got a list of {len(value)}")
        x_path, y_path = (_existing(option, v) for v in value)
        return _load_npy(x_path), _load_npy(y_path), f"{x_path} / {y_path}"
    path = _existing(option, value)
    if path.suffix.lower() == ".npy":
        raise DataError(f"data.{option} {path} is one .npy file, which holds no labels; give "
                        f"the pair data.{option}: [inputs.npy, labels.npy], or an .npz with "
                        f"arrays {input_key!r} and {target_key!r}")
    x, y = _load_npz(path, input_key, target_key)
    return x, y, str(path)


def _check_arrays(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels of one split, checked (``DataError`` naming ``where``)."""
    if x.dtype.kind not in "fiu":
        raise DataError(f"the inputs in {where} have dtype {x.dtype}; they must be real "
                        "numbers (float or integer): convert them, e.g. x.astype(np.float32)")
    if x.ndim < 2:
        raise DataError(f"the inputs in {where} have shape {x.shape}; they must be (N, ...) "
                        "with one row per sample, e.g. reshape a vector of N values to (N, 1)")
    if x.dtype.kind == "f":
        with np.errstate(over="ignore"):  # values beyond float32's range become inf
            bad = ~np.isfinite(x.astype(np.float32, copy=False))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"the inputs in {where} hold {int(bad.sum())} values that are NaN, "
                            f"infinite or beyond float32's range (the first in sample {row}); "
                            "replace or drop them")
    if y.dtype.kind not in "iu":
        raise DataError(f"the labels in {where} have dtype {y.dtype}; they must be integer "
                        "class indices 0..K-1: convert them, e.g. y.astype(np.int64)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"the labels in {where} have shape {y.shape} but the inputs {x.shape}: "
                        f"give one label per sample, shape ({x.shape[0]},)")
    if y.size and int(y.min()) < 0:
        raise DataError(f"the labels in {where} hold a negative class {int(y.min())}; labels "
                        "must be class indices 0..K-1")
    if x.shape[0] == 0:
        raise DataError(f"{where} holds no samples; give at least one")
    return x, y


def _class_count(splits: dict[str, tuple[np.ndarray, np.ndarray, str]],
                 num_classes: int | None) -> int:
    top = max(int(y.max()) for _, y, _ in splits.values()) + 1
    if num_classes is not None:
        for _, y, where in splits.values():
            if int(y.max()) >= num_classes:
                raise DataError(f"the labels in {where} go up to {int(y.max())} but "
                                f"data.num_classes is {num_classes}; raise num_classes or fix "
                                "the labels (they must be 0..num_classes-1)")
        return num_classes
    _, y, where = splits["train"]
    empty = np.setdiff1d(np.arange(top), y)
    if empty.size:
        raise DataError(
            f"class(es) {empty[:10].tolist()} have no training sample in {where}, yet labels go "
            f"up to {top - 1}; labels must be 0..K-1 (1-based labels: subtract 1), or set "
            "data.num_classes when some classes are meant to be absent from training"
        )
    return top


@DATASETS.register("arrays", source=ARRAYS_SOURCE)
def load_arrays(
    train: PathOption | Sequence[PathOption],
    test: PathOption | Sequence[PathOption],
    val: PathOption | Sequence[PathOption] | None = None,
    input_key: str = "x",
    target_key: str = "y",
    num_classes: int | None = None,
) -> DataSplits:
    """Your own arrays: an .npz file (or a pair of .npy files) per split, read without pickle.

    Options:
        train: the training set: an ``.npz`` holding ``input_key`` and ``target_key``, or
            a pair ``[inputs.npy, labels.npy]`` (required).
        test: the test set, in the same form (required).
        val: an explicit validation set, in the same form; a run then validates on it
            instead of carving ``data.val_fraction`` from train. None: carve it.
        input_key, target_key: the arrays' names inside the ``.npz`` files.
        num_classes: the number of classes K; None: the largest label + 1 (every class
            must then have a training sample).

    Inputs are ``(N, *sample_shape)`` floats (stored as float32) or integers (kept, and
    converted to float32 unchanged on fetch: set ``data.normalize`` to scale them); the
    sample shape is what models see, e.g. ``(3, 32, 32)`` or ``(1, 40)``. Labels are
    ``(N,)`` integers in ``0..K-1``. Paths are absolute or relative to the directory of
    the config file that names them (of the current directory on the command line).
    """
    if num_classes is not None:
        num_classes = _positive_int("num_classes", num_classes, minimum=2)
    options = {"train": train, "val": val, "test": test}
    splits = {}
    for option, value in options.items():
        if value is not None:
            x, y, where = _read_split(option, value, input_key, target_key)
            splits[option] = (*_check_arrays(x, y, where), where)
    shape, where = splits["train"][0].shape[1:], splits["train"][2]
    for x, _, other in splits.values():
        if x.shape[1:] != shape:
            raise DataError(f"samples in {other} have shape {x.shape[1:]} but those in {where} "
                            f"{shape}; every split must hold samples of one shape")
    k = _class_count(splits, num_classes)
    classes = [str(c) for c in range(k)]
    sets = {name: ArrayDataset(*_stored(x, y), classes) for name, (x, y, _) in splits.items()}
    return DataSplits(sets["train"], sets["test"], k, tuple(int(s) for s in shape), "arrays",
                      f"{ARRAYS_SOURCE}: {where}", val=sets.get("val"))
