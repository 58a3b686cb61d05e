"""The ``synthetic`` loader: seeded Gaussian blobs of any input shape, for tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kdforge.core.errors import ConfigError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.datasets.base import DATASETS, DataSplits, _positive_int, _shape_option
from kdforge.data.datasets.options import DRAW_SEED_REASON, renamed_options

SYNTHETIC_SOURCE = "generated"


@DATASETS.register("synthetic", source=SYNTHETIC_SOURCE)
@renamed_options({"seed": "draw_seed"}, reason=DRAW_SEED_REASON)
def load_synthetic(
    num_classes: int = 4,
    num_train: int = 256,
    num_test: int = 128,
    input_shape: int | Sequence[int] = (1, 8, 8),
    draw_seed: int = 0,
    noise: float = 1.0,
) -> DataSplits:
    """Gaussian blobs for tests: one random mean per class plus noise, any input shape.

    Each class mean has i.i.d. standard normal entries; a sample is its class mean plus
    gaussian noise of standard deviation ``noise``. With the defaults (64 dimensions) a
    linear classifier is near perfect; raise ``noise`` for a harder task. Labels cycle
    through the classes (balanced) in a seeded random order. Deterministic in
    ``draw_seed`` (private generators; the global RNGs are untouched), and the test set
    does not depend on ``num_train``.

    Options:
        num_classes: number of classes (at least 2).
        num_train, num_test: samples drawn for the training and the test set.
        input_shape: the shape of one sample, e.g. ``[1, 8, 8]`` or ``[1, 40]``.
        draw_seed: the seed that draws the class means and samples (formerly ``seed``;
            the run's top-level ``seed`` never changes the samples).
        noise: the standard deviation of the noise around each class mean.
    """
    seed = _positive_int("draw_seed", draw_seed, minimum=0)
    num_classes = _positive_int("num_classes", num_classes, minimum=2)
    num_train = _positive_int("num_train", num_train)
    num_test = _positive_int("num_test", num_test)
    shape = _shape_option("input_shape", input_shape)
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ConfigError(f"noise must be a number >= 0, got {noise!r}") from None
    if not noise >= 0:
        raise ConfigError(f"noise must be a number >= 0, got {noise}")
    dim = math.prod(shape)

    master = torch.Generator().manual_seed(seed)
    sub_seeds = torch.randint(0, 2**62, (3,), generator=master).tolist()
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(sub_seeds[0]))

    def draw(n: int, sub_seed: int) -> ArrayDataset:
        gen = torch.Generator().manual_seed(sub_seed)
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        x = means[labels] + noise * torch.randn(n, dim, generator=gen)
        return ArrayDataset(
            x.reshape(n, *shape), labels, [f"class_{k}" for k in range(num_classes)]
        )

    train = draw(num_train, sub_seeds[1])
    test = draw(num_test, sub_seeds[2])
    return DataSplits(train, test, num_classes, shape, "synthetic", SYNTHETIC_SOURCE)
