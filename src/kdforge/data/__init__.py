"""Data sets for kdforge: in-memory arrays, lazy image folders and named loaders.

See :mod:`kdforge.data.datasets` for the sample/batch contract every data set follows.
"""

from kdforge.data.datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    ArrayDataset,
    DataSplits,
    ImageFolderDataset,
    LabeledDataset,
    cache_dir,
    load_dataset,
    mean_std,
    split_train_val,
)

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "DataSplits",
    "ImageFolderDataset",
    "LabeledDataset",
    "cache_dir",
    "load_dataset",
    "mean_std",
    "split_train_val",
]
