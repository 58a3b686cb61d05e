"""Data sets for distillation: in-memory arrays, lazy image folders and named loaders.

Every data set here follows one contract so that the loaders and the training step never
care where samples come from:

* ``ds[i]`` returns ``{"input": Tensor (*input_shape) float32, "target": Tensor () int64,
  "index": int}``;
* ``ds.__getitems__([i, j, ...])`` returns the same keys already batched:
  ``{"input": (B, *input_shape), "target": (B,), "index": (B,) int64}``. PyTorch's
  ``DataLoader`` calls it instead of ``__getitem__`` when it exists; pass a ``collate_fn``
  that returns the dict unchanged;
* ``ds.targets`` (``(N,)`` int64), ``ds.classes``, ``ds.num_classes``, ``ds.input_shape``
  (per sample) and ``ds.subset(indices)`` (a new data set of those rows, whose ``index``
  field counts positions in the subset).

Named data sets are built by :func:`load_dataset`, which returns :class:`DataSplits`
(train and test sets plus metadata and a source citation). kdforge never downloads data:
``digits`` ships with scikit-learn, ``mnist1d`` and ``synthetic`` are generated locally,
and ``cifar10``/``cifar100``/``image_folder`` read files the user placed on disk.

One module per source: :mod:`~kdforge.data.datasets.base` (the contract, the registry,
:func:`load_dataset`, the cache folder), ``arrays`` (:class:`ArrayDataset`), ``splits``
(:func:`split_train_val`, :func:`train_and_val`, :func:`mean_std`), ``options`` (each
loader's options: defaults, types, renamed names), ``normalized`` (per-channel input
normalisation), ``image_folder``, ``digits``, ``mnist1d``, ``synthetic``, ``cifar`` and
``array_files`` (the ``arrays`` loader: one's own ``.npz``/``.npy`` files). Every data set's
options are listed in ``docs/data.md`` and by ``kdforge list datasets``.
"""

# The loaders are imported in this order so that they register in the order they always had.
# isort: off
from kdforge.data.datasets.base import (
    DATASETS,
    DataSplits,
    Indices as Indices,
    LabeledDataset,
    cache_dir,
    load_dataset,
)
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.splits import mean_std, split_train_val, train_and_val
from kdforge.data.datasets.digits import DIGITS_SOURCE as DIGITS_SOURCE, load_digits as load_digits
from kdforge.data.datasets.mnist1d import (
    MNIST1D_SOURCE as MNIST1D_SOURCE,
    load_mnist1d as load_mnist1d,
)
from kdforge.data.datasets.synthetic import (
    SYNTHETIC_SOURCE as SYNTHETIC_SOURCE,
    load_synthetic as load_synthetic,
)
from kdforge.data.datasets.image_folder import (
    IMAGE_EXTENSIONS,
    IMAGE_FOLDER_SOURCE as IMAGE_FOLDER_SOURCE,
    ImageFolderDataset,
    load_image_folder as load_image_folder,
)
from kdforge.data.datasets.cifar import (
    CIFAR10_SOURCE as CIFAR10_SOURCE,
    CIFAR100_SOURCE as CIFAR100_SOURCE,
    load_cifar10 as load_cifar10,
    load_cifar100 as load_cifar100,
)
from kdforge.data.datasets.array_files import ARRAYS_SOURCE as ARRAYS_SOURCE, load_arrays as load_arrays
from kdforge.data.datasets.normalized import NormalizedDataset, normalize_splits
from kdforge.data.datasets.options import describe_options, option_defaults
# isort: on

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "DataSplits",
    "ImageFolderDataset",
    "LabeledDataset",
    "NormalizedDataset",
    "cache_dir",
    "describe_options",
    "load_dataset",
    "mean_std",
    "normalize_splits",
    "option_defaults",
    "split_train_val",
    "train_and_val",
]
