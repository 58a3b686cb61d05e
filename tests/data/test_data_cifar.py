"""CIFAR-10 and CIFAR-100 readers on tiny files in the official python format."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdforge.core.errors import DataError
from kdforge.data import load_dataset


def test_cifar10(
    tmp_path: Path, write_cifar10: Callable[[Path], Path], cifar_pattern: Callable
) -> None:
    folder = write_cifar10(tmp_path)
    for root in (folder, tmp_path):  # the extracted folder or its parent
        splits = load_dataset("cifar10", root=str(root))
        assert splits.name == "cifar10" and "Krizhevsky" in splits.source
        assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
        assert splits.train.classes[0] == "airplane" and splits.train.classes[9] == "truck"
        assert len(splits.train) == 10 and len(splits.test) == 3
        assert splits.train.targets.tolist() == [
            (k + j) % 10 for k in range(1, 6) for j in range(2)
        ]
        assert splits.test.targets.tolist() == [0, 9, 3]
    # kept compact, converted per fetch; channel-major rows of 32x32 planes
    assert splits.train.inputs.dtype == torch.uint8
    rows = cifar_pattern(3, 99)
    x = splits.test[2]["input"]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31)]:
        assert x[c, h, w].item() == pytest.approx(rows[2, c * 1024 + h * 32 + w] / 255)
    batch = splits.train.__getitems__([9, 0])
    assert torch.equal(
        batch["input"], torch.stack([splits.train[9]["input"], splits.train[0]["input"]])
    )
    assert float(batch["input"].max()) <= 1.0


def test_cifar100(tmp_path: Path, write_cifar100: Callable[[Path], Path]) -> None:
    folder = write_cifar100(tmp_path)
    splits = load_dataset("cifar100", root=str(tmp_path))
    assert splits.num_classes == 100 and splits.input_shape == (3, 32, 32)
    assert splits.train.targets.tolist() == [0, 99, 42, 7]
    assert splits.test.targets.tolist() == [5, 6]
    assert splits.train.classes[99] == "fine99"
    coarse = load_dataset("cifar100", root=str(folder), label_type="coarse")
    assert coarse.num_classes == 20 and coarse.train.targets.tolist() == [4, 19, 0, 3]
    assert torch.equal(coarse.test.inputs, splits.test.inputs)


def test_missing_files_say_never_downloads(tmp_path: Path, write_cifar10: Callable) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=str(tmp_path / "empty"))
    message = str(err.value)
    assert "data_batch_1" in message and "test_batch" in message and "batches.meta" in message
    assert "never downloads" in message and "cifar-10-batches-py" in message
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing in .*: data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="train, test, meta.*never downloads"):
        load_dataset("cifar100", root=str(tmp_path))


def test_malformed_and_malicious_files(tmp_path: Path, write_cifar100: Callable) -> None:
    folder = write_cifar100(tmp_path)
    (folder / "test").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read CIFAR file"):
        load_dataset("cifar100", root=str(folder))

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    with open(folder / "test", "wb") as handle:
        pickle.dump({"data": Evil()}, handle)
    with pytest.raises(DataError, match="refusing to load global builtins.print"):
        load_dataset("cifar100", root=str(folder))
