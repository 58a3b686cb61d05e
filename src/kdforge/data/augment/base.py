"""What every batched augmentation shares: option checks, random draws on the generator's
device, the separable affine sampling grid, and the crop augmentations' base class."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.data.augment.params import AugmentParams

# --- validation ----------------------------------------------------------------------------


def _pair(name: str, value: Any, allowed: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (lo, hi) with {allowed}; got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{name} must be finite with {allowed}; got {value!r}")
    return lo, hi


def _check_scale(value: Any) -> tuple[float, float]:
    allowed = "0 < lo <= hi <= 1"
    lo, hi = _pair("scale", value, allowed)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"scale must satisfy {allowed} (fractions of the input); got {value!r}")
    return lo, hi


def _check_ratio(value: Any) -> tuple[float, float]:
    allowed = "0 < lo <= hi"
    lo, hi = _pair("ratio", value, allowed)
    if not 0.0 < lo <= hi:
        raise ConfigError(
            f"ratio (aspect ratio width/height) must satisfy {allowed}; got {value!r}"
        )
    return lo, hi


def _check_probability(name: str, value: Any) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} is a probability and must lie in [0, 1]; got {value!r}")
    return p


def _check_center_crop(value: Any) -> float:
    c = float(value)
    if not 0.0 < c <= 1.0:
        raise ConfigError(
            f"center_crop is a fraction of the input and must lie in (0, 1]; got {value!r}"
        )
    return c


def _check_input(x: Any, rank: int, layout: str, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != rank:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{who} expects a batch of shape {layout}; got {shape}")
    if not x.is_floating_point():
        raise ConfigError(
            f"{who} expects a floating-point batch; got {x.dtype} (convert with x.float() first)"
        )


def _check_uniforms(u: Any, rows: int, who: str) -> None:
    if not isinstance(u, Tensor) or u.dim() != 2 or u.shape[0] != rows:
        shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ConfigError(
            f"{who}.from_uniforms expects uniforms of shape ({rows}, B), one row per random "
            f"number; got {shape}"
        )


# --- random draws ----------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Float64 uniforms in [0, 1) drawn on the generator's device."""
    return torch.rand(
        shape, generator=generator, device=_gen_device(generator), dtype=torch.float64
    )


def _scalar_uniform(generator: torch.Generator | None) -> float:
    return float(_uniform((1,), generator).item())


# --- the affine crop -------------------------------------------------------------------------


def _pixel_centres(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised coordinates of the ``size`` pixel centres (align_corners=False)."""
    return (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1


def _axis(
    start: Tensor, length: Tensor, size: int, dtype: torch.dtype, flip: Tensor | None
) -> Tensor:
    """``(B, size)`` sampling coordinates of one axis: ``centre + half_width * u``.

    Maps the output's normalised pixel centres ``u`` onto ``[start, start + length]``
    (fractions), reversed where ``flip``. Only elementwise multiply and add, each rounded
    once, so a row's coordinates never depend on the other rows.
    """
    start = start.to(dtype)
    length = length.to(dtype)
    centre = start * 2 + length - 1
    half = torch.where(flip, -length, length) if flip is not None else length
    return centre[:, None] + half[:, None] * _pixel_centres(size, dtype, start.device)[None, :]


def _resample(x: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """``grid_sample`` of ``x`` (B, C, H, W) at the separable grid ``gx`` (B, W), ``gy`` (B, H)."""
    b, _, h, w = x.shape
    grid = torch.stack((gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)), dim=-1)
    return F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )


def _grid_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def crop_theta(crop: Tensor, flip: Tensor | None = None) -> Tensor:
    """``(B, 2, 3)`` affine matrices of image crop boxes, for ``F.affine_grid``.

    ``crop`` is ``(B, 4)`` ``(top, left, height, width)`` fractions. ``ImageAugment.apply``
    builds the same grid elementwise (see :func:`_axis`) instead of calling ``affine_grid``,
    whose batched matmul is not guaranteed to round a row the same way for every batch size.
    """
    top, left, height, width = crop.to(torch.float32).unbind(1)
    sx = torch.where(flip, -width, width) if flip is not None else width
    zero = torch.zeros_like(top)
    return torch.stack(
        (
            torch.stack((sx, zero, left * 2 + width - 1), 1),
            torch.stack((zero, height, top * 2 + height - 1), 1),
        ),
        1,
    )


# --- augmentations ---------------------------------------------------------------------------


class _CropAugment:
    """What the image and signal augmentations share: drawing and applying in one call,
    the un-augmented (centred) view, and a repr from :meth:`config`."""

    #: rank of a batch and its layout, for the input checks
    _rank: int = 4
    _layout: str = "(B, C, H, W)"
    center_crop: float = 1.0

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    #: uniforms per view that :meth:`from_uniforms` maps to the view's parameters
    num_uniforms: int = 0

    def sample(self, batch_size: int, generator: torch.Generator | None,
               device: torch.device | str | None = None) -> AugmentParams:
        """Draw ``batch_size`` views: ``num_uniforms`` uniforms per view from ``generator``
        (on its own device; ``None`` uses the global CPU generator) mapped by
        :meth:`from_uniforms`, then whatever :meth:`_extra` draws. Returns the parameters on
        ``device`` (default: the generator's device)."""
        params = self.from_uniforms(_uniform((self.num_uniforms, batch_size), generator))
        self._extra(params, batch_size, generator)
        return params.to(device) if device is not None else params

    def _extra(self, params: AugmentParams, batch_size: int,
               generator: torch.Generator | None) -> None:
        """Draw what the uniforms do not give (signals: noise seeds); nothing by default."""

    def from_uniforms(self, u: Tensor) -> AugmentParams:
        raise NotImplementedError

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        raise NotImplementedError

    def _center_box(self, c: float) -> list[float]:
        """The crop of the centred window keeping fraction ``c`` of each axis."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({options})"

    def __call__(
        self, x: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, AugmentParams]:
        """Draw parameters for ``x`` and apply them: ``(augmented, params)``."""
        _check_input(x, self._rank, self._layout, type(self).__name__)
        params = self.sample(x.shape[0], generator, x.device)
        return self.apply(x, params), params

    def center(self, x: Tensor) -> Tensor:
        """The un-augmented view of ``x``: ``x`` itself, or its centred crop."""
        _check_input(x, self._rank, self._layout, type(self).__name__)
        if self.center_crop == 1.0:
            return x
        box = torch.tensor(self._center_box(self.center_crop), device=x.device)
        return self.apply(x, AugmentParams(crop=box.expand(x.shape[0], -1)))


__all__ = ["crop_theta"]
