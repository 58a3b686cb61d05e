"""Fixtures for the data set tests: tiny image folders and CIFAR files written on the fly."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def kdforge_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty KDFORGE_CACHE for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDFORGE_CACHE", str(cache))
    return cache


def write_image(path: Path, value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    """Write a ``size`` (W, H) image whose pixels encode ``value`` (channel c = value + c)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if mode == "RGB":
        array = np.zeros((height, width, 3), dtype=np.uint8)
        for c in range(3):
            array[..., c] = value + c
    else:
        array = np.full((height, width), value, dtype=np.uint8)
    array[0, 0] = 255  # one bright pixel, to check orientation
    Image.fromarray(array).save(path)


@pytest.fixture
def image_writer() -> Callable[..., None]:
    """:func:`write_image`, for tests that add images (a fixture, so no test imports conftest)."""
    return write_image


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """root/cat (3 PNGs) and root/dog (a PNG and a BMP), all 8x8 RGB, plus non-image files."""
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "cat" / f"c{i}.png", 10 * i)
    write_image(root / "dog" / "d0.png", 100)
    write_image(root / "dog" / "d1.bmp", 110)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("files in the root are ignored")
    return root


# --- CIFAR in the official python format -------------------------------------------


def _dump(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """``n`` uint8 rows of 3072 values with a recognisable pattern."""
    return ((np.arange(n * 3072).reshape(n, 3072) + offset) % 251).astype(np.uint8)


@pytest.fixture
def cifar_pattern() -> Callable[[int, int], np.ndarray]:
    """:func:`cifar_rows`, to compare decoded pixels with what was written."""
    return cifar_rows


@pytest.fixture
def write_cifar10() -> Callable[[Path], Path]:
    """Write a tiny cifar-10-batches-py folder (bytes keys, as read with encoding='bytes')."""

    def write(parent: Path) -> Path:
        folder = parent / "cifar-10-batches-py"
        for k in range(1, 6):
            _dump(
                {
                    b"batch_label": f"training batch {k} of 5".encode(),
                    b"labels": [(k + j) % 10 for j in range(2)],
                    b"data": cifar_rows(2, 7 * k),
                    b"filenames": [f"img{k}_{j}.png".encode() for j in range(2)],
                },
                folder / f"data_batch_{k}",
            )
        _dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": [0, 9, 3],
                b"data": cifar_rows(3, 99),
                b"filenames": [b"a.png", b"b.png", b"c.png"],
            },
            folder / "test_batch",
        )
        names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        _dump(
            {
                b"num_cases_per_batch": 10000,
                b"label_names": [n.encode() for n in names],
                b"num_vis": 3072,
            },
            folder / "batches.meta",
        )
        return folder

    return write


@pytest.fixture
def write_cifar100() -> Callable[[Path], Path]:
    """Write a tiny cifar-100-python folder (str keys, as Python 2 files read with latin1)."""

    def write(parent: Path) -> Path:
        folder = parent / "cifar-100-python"
        _dump(
            {
                "filenames": ["x.png"] * 4,
                "batch_label": "training batch 1 of 1",
                "fine_labels": [0, 99, 42, 7],
                "coarse_labels": [4, 19, 0, 3],
                "data": cifar_rows(4, 1),
            },
            folder / "train",
        )
        _dump(
            {
                "filenames": ["y.png"] * 2,
                "batch_label": "testing batch 1 of 1",
                "fine_labels": [5, 6],
                "coarse_labels": [1, 2],
                "data": cifar_rows(2, 3),
            },
            folder / "test",
        )
        _dump(
            {
                "fine_label_names": [f"fine{k}" for k in range(100)],
                "coarse_label_names": [f"coarse{k}" for k in range(20)],
            },
            folder / "meta",
        )
        return folder

    return write
