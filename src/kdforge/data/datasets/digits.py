"""The ``digits`` loader: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import torch

from kdforge.core.errors import DataError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits, _check_fraction
from kdforge.data.datasets.splits import _split_or_error

DIGITS_SOURCE = (
    "Alpaydin & Kaynak 1998, Optical Recognition of Handwritten Digits, UCI Machine "
    "Learning Repository; via scikit-learn's load_digits"
)


@DATASETS.register("digits", source=DIGITS_SOURCE)
def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """8x8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1].

    There is no official test split: a stratified ``test_fraction`` is held out with the
    fixed ``split_seed``, so the test set never depends on a run's seed.
    """
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise DataError("dataset 'digits' needs scikit-learn: pip install 'kdforge[data]'") from err
    bunch = sk_load_digits()  # bundled with scikit-learn; never downloads
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    full = ArrayDataset(images, bunch.target, [str(k) for k in range(10)])
    train, test = _split_or_error(full, test_fraction, split_seed, "test_fraction")
    return DataSplits(train, test, 10, (1, 8, 8), "digits", DIGITS_SOURCE)
