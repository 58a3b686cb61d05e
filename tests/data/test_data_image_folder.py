"""ImageFolderDataset and the image_folder loader, on PNGs written by the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdforge.core.errors import ConfigError, DataError
from kdforge.data import ImageFolderDataset, LabeledDataset, load_dataset


def test_layout_classes_and_values(image_root: Path) -> None:
    ds = ImageFolderDataset(image_root)
    assert isinstance(ds, LabeledDataset)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 5  # the .txt and the root's README are ignored
    assert ds.targets.tolist() == [0, 0, 0, 1, 1] and ds.targets.dtype == torch.int64
    assert ds.input_shape == (3, 8, 8)
    item = ds[1]  # cat/c1.png: channel c holds 10 + c, pixel (0, 0) is 255
    x = item["input"]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[:, 1, 1], torch.tensor([10.0, 11.0, 12.0]) / 255)
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert int(item["target"]) == 0 and item["index"] == 1
    assert torch.allclose(ds[4]["input"][:, 3, 3], torch.tensor([110.0, 111.0, 112.0]) / 255)


def test_getitems_equals_stacked_getitem(image_root: Path) -> None:
    ds = ImageFolderDataset(image_root)
    indices = [4, 0, 2]
    batch = ds.__getitems__(indices)
    assert torch.equal(batch["input"], torch.stack([ds[i]["input"] for i in indices]))
    assert batch["target"].tolist() == [1, 0, 0]
    assert batch["index"].tolist() == indices and batch["index"].dtype == torch.int64


def test_grey_mode_and_resize(image_root: Path) -> None:
    ds = ImageFolderDataset(image_root, image_size=(4, 6), mode="L")
    assert ds.input_shape == (1, 4, 6)
    assert ds[0]["input"].shape == (1, 4, 6)
    assert ds.__getitems__([0, 3])["input"].shape == (2, 1, 4, 6)
    assert ImageFolderDataset(image_root, image_size=5).input_shape == (3, 5, 5)
    with pytest.raises(ConfigError, match="mode"):
        ImageFolderDataset(image_root, mode="CMYK")
    with pytest.raises(ConfigError, match="image_size"):
        ImageFolderDataset(image_root, image_size=(1, 2, 3))


def test_mixed_sizes_need_image_size(image_root: Path, image_writer: Callable[..., None]) -> None:
    image_writer(image_root / "dog" / "d2.png", 5, size=(10, 12))
    ds = ImageFolderDataset(image_root)
    with pytest.raises(DataError, match=r"d2\.png.*image_size"):
        ds.__getitems__(list(range(len(ds))))
    resized = ImageFolderDataset(image_root, image_size=8)
    assert resized.__getitems__(list(range(len(resized))))["input"].shape == (6, 3, 8, 8)


def test_subset(image_root: Path) -> None:
    ds = ImageFolderDataset(image_root)
    sub = ds.subset([3, 0])
    assert isinstance(sub, ImageFolderDataset)
    assert len(sub) == 2 and sub.targets.tolist() == [1, 0] and sub.classes == ds.classes
    assert torch.equal(sub[0]["input"], ds[3]["input"]) and sub[0]["index"] == 0


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        ImageFolderDataset(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "does not exist" in str(err.value)
    assert "root/CLASS_NAME" in str(err.value)


def test_no_class_subfolders(tmp_path: Path, image_writer: Callable[..., None]) -> None:
    image_writer(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(DataError, match="no class subfolders.*CLASS_NAME"):
        ImageFolderDataset(tmp_path / "flat")


def test_empty_class_folder(image_root: Path) -> None:
    (image_root / "emu").mkdir()
    (image_root / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        ImageFolderDataset(image_root)
    assert str(image_root / "emu") in str(err.value) and "no images" in str(err.value)


def test_corrupt_image_names_the_file(image_root: Path) -> None:
    bad = image_root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="broken.png"):  # the default decodes every image first
        ImageFolderDataset(image_root)
    ds = ImageFolderDataset(image_root, verify="none")  # lazy: nothing decoded yet
    position = ds.paths.index(str(bad))
    with pytest.raises(DataError) as err:
        ds[position]
    assert str(bad) in str(err.value) and "replace or delete" in str(err.value)
    with pytest.raises(DataError, match="broken.png"):
        ds.__getitems__([0, position])
    first_bad = image_root / "aaa" / "zero.png"
    first_bad.parent.mkdir()
    first_bad.write_bytes(b"")
    with pytest.raises(DataError, match="zero.png"):  # size probe of the first image
        ImageFolderDataset(image_root, verify="none")


def test_loader_split_is_stratified_and_fixed(
    tmp_path: Path, image_writer: Callable[..., None]
) -> None:
    root = tmp_path / "many"
    for k in range(10):
        image_writer(root / "a" / f"{k}.png", k)
        image_writer(root / "b" / f"{k}.png", 100 + k)
    splits = load_dataset("image_folder", root=str(root), test_fraction=0.2)
    assert splits.num_classes == 2 and splits.input_shape == (3, 8, 8)
    assert len(splits.train) == 16 and len(splits.test) == 4
    assert torch.bincount(splits.test.targets).tolist() == [2, 2]
    again = load_dataset("image_folder", root=str(root))
    assert again.test.paths == splits.test.paths
    assert set(splits.train.paths).isdisjoint(splits.test.paths)


def test_loader_with_test_root(
    image_root: Path, tmp_path: Path, image_writer: Callable[..., None]
) -> None:
    test_root = tmp_path / "test_images"
    image_writer(test_root / "cat" / "t.png", 1)
    image_writer(test_root / "dog" / "t.png", 2)
    splits = load_dataset("image_folder", root=str(image_root), test_root=str(test_root), mode="L")
    assert len(splits.train) == 5 and len(splits.test) == 2
    assert splits.input_shape == (1, 8, 8) and splits.test.classes == ["cat", "dog"]
    image_writer(test_root / "emu" / "t.png", 3)
    with pytest.raises(DataError, match="unexpected.*emu"):
        load_dataset("image_folder", root=str(image_root), test_root=str(test_root))
