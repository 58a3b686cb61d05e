"""Batched, parameter-recording augmentations that run on the training device.

Every augmentation here works on a whole batch of tensors on the device the batch lives on
(CPU or CUDA, the same code), draws its random parameters from an explicit
:class:`torch.Generator`, returns those parameters next to the augmented batch, and can
*replay* them: ``aug.apply(x, params)`` reproduces ``aug(x, generator)`` bit for bit. Each
output row depends only on its own input row and its own row of parameters, so one sample
can be regenerated alone: ``aug.apply(x[i:i + 1], params.select(i))`` equals row ``i`` of the
batch result. Two methods of the library rest on this:

* consistent teaching and function matching (Beyer et al., "Knowledge distillation: A good
  teacher is patient and consistent", CVPR 2022): the teacher and the student see the same
  crop (and the same mixup) of an image, so the view draws the parameters once and applies
  them to both inputs;
* FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition",
  ECCV 2022): the soft labels of many random crops are computed once and stored with each
  crop's parameters (:meth:`AugmentParams.as_dict`); training later regenerates the
  identical crop of one sample from its stored row (:meth:`AugmentParams.from_dict`).

Contents:

* :class:`ImageAugment`: Inception-style random resized crop (Szegedy et al., "Going Deeper
  with Convolutions", CVPR 2015) and horizontal flip for ``(B, C, H, W)`` images, as a single
  affine grid + ``grid_sample`` per batch;
* :class:`SignalAugment`: random resized crop, time reversal and additive Gaussian noise for
  ``(B, C, L)`` signals (MNIST-1D); the noise comes from a per-sample seed through a
  counter-based hash (:func:`seeded_normal`), so one sample's noise is regenerated alone;
* :class:`Mixup`: mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR
  2018) and CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers
  with Localizable Features", ICCV 2019), one ratio per batch as in Beyer et al.'s code;
* :class:`AugmentParams` and :class:`MixParams`: the recorded parameters, per sample;
* :func:`make_augment`: picks the augmentation for a per-sample input shape.

One module per kind of draw: :mod:`~kdforge.data.augment.params` (the recorded parameters),
:mod:`~kdforge.data.augment.base` (checks, draws, the affine grid, the crop base class),
:mod:`~kdforge.data.augment.image`, :mod:`~kdforge.data.augment.signal`,
:mod:`~kdforge.data.augment.mix` and :mod:`~kdforge.data.augment.factory`; the counter-based
hashing behind the noise is :mod:`kdforge.core.rng` (re-exported here).

Random parameters are drawn on the generator's device and then moved to the requested
device, so a CPU generator with a given seed yields the same parameters whatever device the
batch is on.
"""

from kdforge.core.rng import mix32, mul32, seeded_normal, seeded_uniform
from kdforge.data.augment.base import crop_theta
from kdforge.data.augment.factory import make_augment
from kdforge.data.augment.image import ImageAugment
from kdforge.data.augment.mix import Mixup
from kdforge.data.augment.params import AugmentParams, Index, MixParams
from kdforge.data.augment.signal import SignalAugment

__all__ = [
    "AugmentParams",
    "ImageAugment",
    "Index",
    "MixParams",
    "Mixup",
    "SignalAugment",
    "crop_theta",
    "make_augment",
    "mix32",
    "mul32",
    "seeded_normal",
    "seeded_uniform",
]
