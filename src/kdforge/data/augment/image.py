"""Inception-style random resized crops and horizontal flips of image batches."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.data.augment.base import (
    _axis,
    _check_center_crop,
    _check_input,
    _check_probability,
    _check_ratio,
    _check_scale,
    _check_uniforms,
    _CropAugment,
    _grid_dtype,
    _resample,
)
from kdforge.data.augment.params import AugmentParams, _check_batch


class ImageAugment(_CropAugment):
    """Random resized crop + horizontal flip for ``(B, C, H, W)`` image batches.

    The crop follows the Inception recipe (Szegedy et al. 2015, as in torchvision's
    ``RandomResizedCrop``): area fraction uniform in ``scale``, aspect ratio log-uniform in
    ``ratio``, box placed uniformly inside the image and resized back to ``(H, W)``. The
    aspect ratio is taken relative to the image (width fraction / height fraction; the
    pixel aspect ratio for square images). Instead of a rejection loop, a box wider or
    taller than the image is clipped to the full side and the other side becomes the area
    fraction, so the area always lies in ``scale`` and only the aspect ratio is bent.

    Crop, resize and flip are one affine sampling grid and one ``grid_sample`` per batch
    (bilinear, ``align_corners=False``, ``padding_mode='border'``): pixels just outside the
    box (inside the image) take part in the interpolation at the box edges.

    Args:
        scale: ``(lo, hi)`` range of the crop's area fraction, ``0 < lo <= hi <= 1``
            (default ``(0.05, 1.0)``, the range Beyer et al. 2022 use; torchvision uses 0.08).
        ratio: ``(lo, hi)`` range of the aspect ratio, ``0 < lo <= hi`` (default 3/4 to 4/3).
        flip: probability of a horizontal flip, in ``[0, 1]`` (default 0.5).
        center_crop: side fraction of the centred box :meth:`center` returns, in ``(0, 1]``
            (default 1.0: the whole image, returned unchanged).
    """

    rank = 2

    def __init__(
        self,
        scale: tuple[float, float] = (0.05, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        center_crop: float = 1.0,
    ) -> None:
        self.scale = _check_scale(scale)
        self.ratio = _check_ratio(ratio)
        self.flip = _check_probability("flip", flip)
        self.center_crop = _check_center_crop(center_crop)

    def config(self) -> dict[str, Any]:
        """The constructor options (JSON-serialisable), e.g. for a store's ``meta.json``."""
        return {
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip": self.flip,
            "center_crop": self.center_crop,
        }

    _rank, _layout = 4, "(B, C, H, W)"
    #: uniforms per view that :meth:`from_uniforms` maps to a crop and a flip
    num_uniforms = 5

    def _center_box(self, c: float) -> list[float]:
        return [(1 - c) / 2, (1 - c) / 2, c, c]

    def from_uniforms(self, u: Tensor) -> AugmentParams:
        """The crops and flips that the uniforms ``u`` ``(5, B)`` in [0, 1) select.

        Row 0 picks the area, 1 the aspect ratio, 2 and 3 the top and left position, 4 the
        flip. :meth:`sample` feeds it draws of a generator; a soft-label store feeds it
        counter-based uniforms (:func:`seeded_uniform`), so a view's crop is a pure function
        of its seed. Elementwise float64 math: column ``b`` gives row ``b`` of the result.
        """
        _check_uniforms(u, self.num_uniforms, "ImageAugment")
        u = u.to(torch.float64)
        lo, hi = self.scale
        area = lo + (hi - lo) * u[0]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        width = torch.sqrt(area * aspect)
        height = torch.sqrt(area / aspect)
        too_wide, too_tall = width > 1, height > 1
        width, height = (
            torch.where(too_wide, 1.0, torch.where(too_tall, area, width)),
            torch.where(too_tall, 1.0, torch.where(too_wide, area, height)),
        )
        top = u[2] * (1 - height)
        left = u[3] * (1 - width)
        crop = torch.stack((top, left, height, width), dim=1).to(torch.float32)
        return AugmentParams(crop=crop, flip=u[4] < self.flip)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Replay ``params`` on ``x`` (B, C, H, W) -> (B, C, H, W), same dtype and device.

        Row ``b`` of the result depends only on ``x[b]`` and row ``b`` of ``params``.
        """
        _check_input(x, 4, "(B, C, H, W)", "ImageAugment")
        _check_batch(params, x, "ImageAugment.apply")
        b, _, h, w = x.shape
        crop = params.crop
        if crop is None:
            crop = AugmentParams.identity(b, 2, x.device).crop
        elif crop.shape[1] != 4:
            raise ConfigError(
                f"ImageAugment.apply needs (B, 4) crop boxes; got {tuple(crop.shape)} "
                "(parameters of a SignalAugment?)"
            )
        crop = crop.to(x.device)
        flip = params.flip.to(x.device) if params.flip is not None else None
        dtype = _grid_dtype(x)
        top, left, height, width = crop.unbind(1)
        gx = _axis(left, width, w, dtype, flip)
        gy = _axis(top, height, h, dtype, None)
        return _resample(x, gx, gy)


__all__ = ["ImageAugment"]
