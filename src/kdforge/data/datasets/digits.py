"""The ``digits`` loader: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.core.errors import DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits, _check_fraction, _positive_int
from kdforge.data.datasets.splits import _split_or_error

DIGITS_SOURCE = (
    "Alpaydin & Kaynak 1998, Optical Recognition of Handwritten Digits, UCI Machine "
    "Learning Repository; via scikit-learn's load_digits"
)


@DATASETS.register("digits", source=DIGITS_SOURCE)
def load_digits(test_fraction: float = 0.2, split_seed: int = 0, image_size: int = 8) -> DataSplits:
    """8x8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1].

    There is no official test split: a stratified ``test_fraction`` is held out with the
    fixed ``split_seed``, so the test set never depends on a run's seed.

    Options:
        test_fraction: the share of the 1797 images held out for testing.
        split_seed: the seed of that split.
        image_size: the side of the square images; 8 keeps them as they are, another size
            resizes them once, bilinearly (``torch.nn.functional.interpolate``,
            ``align_corners=False``, with antialiasing when shrinking), e.g. 32 for models
            made for CIFAR-sized inputs.
    """
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    image_size = _positive_int("image_size", image_size, minimum=2)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise DataError("dataset 'digits' needs scikit-learn: pip install 'kdforge[data]'") from err
    bunch = sk_load_digits()  # bundled with scikit-learn; never downloads
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False, antialias=image_size < 8).clamp_(0.0, 1.0)
    full = ArrayDataset(images, bunch.target, [str(k) for k in range(10)])
    train, test = _split_or_error(full, test_fraction, split_seed, "test_fraction")
    return DataSplits(train, test, 10, (1, image_size, image_size), "digits", DIGITS_SOURCE)
