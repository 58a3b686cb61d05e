"""The ``image_folder`` loader: images read lazily from ``root/CLASS_NAME/*.png|jpg|...``."""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets.base import (
    DATASETS,
    DataSplits,
    Indices,
    _check_fraction,
    _index_tensor,
    _position,
)
from kdforge.data.datasets.splits import _split_or_error

#: File name endings (lower case) that :class:`ImageFolderDataset` treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")


def _normalize_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        raise ConfigError(f"image_size must be an int or (height, width), got {image_size!r}")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            size = tuple(operator.index(s) for s in image_size)
        except TypeError:
            raise ConfigError(
                f"image_size must be an int or (height, width), got {image_size!r}"
            ) from None
        if len(size) != 2:
            raise ConfigError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return (int(size[0]), int(size[1]))


def _scan_image_folder(
    root: Path, classes: Sequence[str] | None
) -> tuple[list[str], list[str], list[int]]:
    """(classes, image paths, targets) for ``root/CLASS/*.png``; DataError on bad layouts."""
    if not root.exists():
        raise DataError(
            f"image folder {root} does not exist; pass root= pointing to a folder laid out "
            "as root/CLASS_NAME/image.png (one subfolder per class)"
        )
    if not root.is_dir():
        raise DataError(f"image folder root {root} is a file, not a folder; pass its folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(
            f"image folder {root} has no class subfolders; put the images of each class in "
            f"their own subfolder: {root}/CLASS_NAME/image.png"
        )
    if classes is None:
        names = found
    else:
        names = [str(c) for c in classes]
        missing = sorted(set(names) - set(found))
        extra = sorted(set(found) - set(names))
        if missing or extra:
            raise DataError(
                f"the class subfolders of {root} do not match the expected classes: "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}; train and test "
                "folders must have one subfolder per class with the same names"
            )
    paths: list[str] = []
    targets: list[int] = []
    for k, name in enumerate(names):
        folder = root / name
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
        paths.extend(str(p) for p in files)
        targets.extend([k] * len(files))
    return names, paths, targets


class ImageFolderDataset(Dataset):
    """Images read lazily from ``root/CLASS_NAME/*.png|jpg|jpeg|bmp``.

    Classes are the subfolder names, sorted; images inside a class folder are sorted by
    name. Nothing is decoded up front (only the first image's header is read to learn the
    sample shape when ``image_size`` is None): each fetch opens the file with PIL,
    converts it to ``mode``, resizes it to ``image_size`` and returns a ``(C, H, W)``
    float32 tensor in ``[0, 1]``.

    Args:
        root: the folder holding one subfolder per class.
        image_size: ``int`` or ``(height, width)`` to resize every image to (bilinear).
            Required when the images differ in size; None keeps the size of the images.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grey scale, 1 channel).
        classes: the expected class names (e.g. the training folder's, for a test folder);
            the subfolders must match them exactly. None: use the subfolders found.
        verify: what is checked of every image before any is used: ``"decode"`` (default:
            each image is decoded once, so a truncated or corrupt file is refused before
            training, at the cost of reading the folder once more), ``"header"`` (each file
            is opened and its header parsed: catches files that are not images or are
            empty, cheap for large folders) or ``"none"`` (a bad file is found when it is
            first read, mid-training).

    Raises:
        DataError: the root is missing, has no class subfolders, a class folder has no
            images, or (on access) an image cannot be read or has the wrong size.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int | Sequence[int] | None = None,
        mode: str = "RGB",
        classes: Sequence[str] | None = None,
        verify: str = "decode",
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ConfigError(f"mode must be 'RGB' or 'L' (grey scale), got {mode!r}")
        if verify not in VERIFY:
            raise ConfigError(f"verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        self.root = Path(root).expanduser()
        self.mode = mode
        self.image_size = _normalize_image_size(image_size)
        self.classes, self.paths, targets = _scan_image_folder(self.root, classes)
        self.targets = torch.tensor(targets, dtype=torch.int64)
        self._hw = self.image_size or self._native_size(self.paths[0])
        self.verify = verify
        if verify != "none":
            self._verify(decode=verify == "decode")

    @classmethod
    def _from_parts(
        cls, parent: ImageFolderDataset, paths: list[str], targets: Tensor
    ) -> ImageFolderDataset:
        new = cls.__new__(cls)
        new.root = parent.root
        new.mode = parent.mode
        new.image_size = parent.image_size
        new.classes = list(parent.classes)
        new.paths = paths
        new.targets = targets
        new._hw = parent._hw
        new.verify = parent.verify
        return new

    # -- metadata ---------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every returned sample."""
        return (3 if self.mode == "RGB" else 1, self._hw[0], self._hw[1])

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.root)!r}, {len(self)} images, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    # -- decoding ---------------------------------------------------------------------

    def _verify(self, decode: bool) -> None:
        """Open (and with ``decode`` fully decode) every image; :class:`DataError` names the
        unreadable ones (the first five) before anything trains on them."""
        from PIL import Image

        bad: list[str] = []
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    if decode:
                        img.load()
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                bad.append(f"{path} ({err})")
        if bad:
            raise DataError(
                f"{len(bad)} of the {len(self.paths)} image files under {self.root} cannot be "
                f"read: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the files are "
                "corrupt or not images: replace or delete them"
            )

    @staticmethod
    def _unreadable(path: str, err: BaseException) -> DataError:
        return DataError(
            f"cannot read image file {path}: {err}; the file is corrupt or not an image: "
            "replace or delete it"
        )

    def _native_size(self, path: str) -> tuple[int, int]:
        from PIL import Image

        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise self._unreadable(path, err) from None
        return (height, width)

    def _load_uint8(self, path: str) -> Tensor:
        """One image as a ``(C, H, W)`` uint8 tensor."""
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
                if self.image_size is not None:
                    height, width = self.image_size
                    if img.size != (width, height):
                        img = img.resize((width, height), Image.Resampling.BILINEAR)
                array = np.array(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise self._unreadable(path, err) from None
        if array.shape[:2] != self._hw:
            raise DataError(
                f"image {path} is {array.shape[0]}x{array.shape[1]} (HxW) but the data set's "
                f"images are {self._hw[0]}x{self._hw[1]}; pass image_size=(H, W) to resize "
                "all images to one size"
            )
        tensor = torch.from_numpy(array)
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = _position(i, len(self))
        image = self._load_uint8(self.paths[pos]).to(torch.float32).div_(255.0)
        return {"input": image, "target": self.targets[pos].clone(), "index": pos}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = _index_tensor(indices, len(self))
        if idx.numel() == 0:
            images = torch.empty((0, *self.input_shape), dtype=torch.float32)
        else:
            images = torch.stack([self._load_uint8(self.paths[p]) for p in idx.tolist()])
            images = images.to(torch.float32).div_(255.0)
        return {"input": images, "target": self.targets.index_select(0, idx), "index": idx}

    def subset(self, indices: Indices) -> ImageFolderDataset:
        """The images at ``indices`` (paths only; nothing is loaded)."""
        idx = _index_tensor(indices, len(self))
        return self._from_parts(
            self, [self.paths[p] for p in idx.tolist()], self.targets.index_select(0, idx)
        )


#: what ImageFolderDataset checks of every image up front (see its ``verify``)
VERIFY = ("decode", "header", "none")

IMAGE_FOLDER_SOURCE = "local image folder (root/CLASS_NAME/*.png|jpg|jpeg|bmp)"


@DATASETS.register("image_folder", source=IMAGE_FOLDER_SOURCE)
def load_image_folder(
    root: str | os.PathLike[str],
    test_root: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    mode: str = "RGB",
    val_root: str | os.PathLike[str] | None = None,
    verify: str = "decode",
) -> DataSplits:
    """Images in ``root/CLASS_NAME/`` (read lazily); test set from ``test_root`` or a split.

    Options:
        root: the training folder, one subfolder per class (required).
        test_root: a test folder with the same class subfolders; None: a stratified
            ``test_fraction`` of ``root`` is held out with the fixed ``split_seed``.
        test_fraction: the share of ``root`` held out for testing without ``test_root``.
        split_seed: the seed of that split (fixed, so the test set never depends on a
            run's seed).
        image_size: ``int`` or ``(height, width)`` to resize every image to (bilinear);
            None keeps the images' size (they must then all be the same size).
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grey scale, 1 channel).
        val_root: an explicit validation folder with the same class subfolders; a run
            then validates on it instead of carving ``data.val_fraction`` from train.
        verify: how much of every image (of every folder) is checked before training:
            ``decode`` (each decoded once), ``header`` or ``none`` (see
            :class:`ImageFolderDataset`).
    """
    train_full = ImageFolderDataset(root, image_size=image_size, mode=mode, verify=verify)
    if test_root is None:
        test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
        train, test = _split_or_error(train_full, test_fraction, split_seed, "test_fraction")
    else:
        train = train_full
        test = _matching_folder(train_full, test_root, root, image_size, mode)
    val = None if val_root is None else _matching_folder(train_full, val_root, root,
                                                         image_size, mode)
    return DataSplits(
        train,
        test,
        train_full.num_classes,
        train_full.input_shape,
        "image_folder",
        f"{IMAGE_FOLDER_SOURCE}: {train_full.root}",
        val=val,
    )


def _matching_folder(
    train: ImageFolderDataset,
    folder: str | os.PathLike[str],
    root: str | os.PathLike[str],
    image_size: int | Sequence[int] | None,
    mode: str,
) -> ImageFolderDataset:
    """The images of ``folder`` (a test or validation folder): the training folder's classes
    and image size, else ``DataError``."""
    other = ImageFolderDataset(folder, image_size=image_size, mode=mode, classes=train.classes,
                               verify=train.verify)
    if other.input_shape != train.input_shape:
        raise DataError(
            f"images in {folder} are {other.input_shape[1:]} (HxW) but those in {root} "
            f"are {train.input_shape[1:]}; pass image_size=(H, W) to resize all images"
        )
    return other
