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

Random parameters are drawn on the generator's device and then moved to the requested
device, so a CPU generator with a given seed yields the same parameters whatever device the
batch is on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.registry import call_with_checked_kwargs

__all__ = [
    "AugmentParams",
    "ImageAugment",
    "MixParams",
    "Mixup",
    "SignalAugment",
    "make_augment",
    "seeded_normal",
    "seeded_uniform",
]

Index = Tensor | int | slice | Sequence[int]
_P = TypeVar("_P", bound="_ParamsBase")


# --- recorded parameters -----------------------------------------------------------------


def _as_index(index: Index, device: torch.device) -> Tensor | slice:
    """A row index that keeps the leading dimension (an int selects a batch of one)."""
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        return torch.tensor([index], device=device)
    return torch.as_tensor(index, device=device)


class _ParamsBase:
    """Row-wise helpers shared by :class:`AugmentParams` and :class:`MixParams`.

    Every field is ``None`` or a tensor whose leading dimension is the batch size ``B``.
    """

    _required: tuple[str, ...] = ()
    _dtypes: dict[str, torch.dtype] = {}

    def __post_init__(self) -> None:
        sizes = {}
        for name, value in self._items():
            if not isinstance(value, Tensor) or value.dim() == 0:
                raise ConfigError(
                    f"{type(self).__name__}.{name} must be a tensor with a leading batch "
                    f"dimension; got {value!r}"
                )
            sizes[name] = value.shape[0]
        for name in self._required:
            if getattr(self, name) is None:
                raise ConfigError(f"{type(self).__name__}.{name} is required; got None")
        if len(set(sizes.values())) > 1:
            raise ConfigError(
                f"{type(self).__name__} fields disagree on the batch size: {sizes}; every "
                "field needs the same leading dimension"
            )

    def _items(self) -> list[tuple[str, Tensor]]:
        """(name, tensor) of the fields that are set, in declaration order."""
        pairs = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        return [(name, value) for name, value in pairs if value is not None]

    def __len__(self) -> int:
        items = self._items()
        return int(items[0][1].shape[0]) if items else 0

    def _replace(self: _P, fn: Any) -> _P:
        return type(self)(**{name: fn(value) for name, value in self._items()})

    def select(self: _P, index: Index) -> _P:
        """The rows ``index`` of every field (an int gives a batch of one, not a scalar row)."""
        return self._replace(lambda t: t[_as_index(index, t.device)])

    def to(self: _P, device: torch.device | str) -> _P:
        """The same parameters with every tensor on ``device``."""
        return self._replace(lambda t: t.to(device))

    @classmethod
    def cat(cls: type[_P], parts: Sequence[_P]) -> _P:
        """Concatenate parameters along the batch dimension (all parts set the same fields)."""
        parts = list(parts)
        if not parts:
            raise ConfigError(f"{cls.__name__}.cat needs at least one part; got an empty list")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        merged: dict[str, Tensor | None] = {}
        for name in names:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                merged[name] = None
            elif any(v is None for v in values):
                raise ConfigError(
                    f"{cls.__name__}.cat: field {name!r} is set in some parts and None in "
                    "others; concatenate parameters drawn by the same augmentation"
                )
            else:
                merged[name] = torch.cat(values)
        return cls(**merged)

    def as_dict(self) -> dict[str, Tensor]:
        """The fields that are set, name -> tensor (for storage; see :meth:`from_dict`)."""
        return dict(self._items())

    @classmethod
    def from_dict(cls: type[_P], data: dict[str, Any]) -> _P:
        """Rebuild parameters from :meth:`as_dict` output (arrays are converted to tensors).

        Missing optional fields become ``None``; unknown keys raise :class:`ConfigError`.
        Each field is cast to its canonical dtype, so stores may keep a narrower one.
        """
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}.from_dict: unknown keys {unknown}; allowed keys: "
                + ", ".join(names)
            )
        values = {}
        for name in names:
            value = data.get(name)
            if value is not None:
                value = torch.as_tensor(value).to(cls._dtypes[name])
            values[name] = value
        return cls(**values)


def _check_box(name: str, box: Tensor | None) -> None:
    """A box field is ``(B, 4)`` (images) or ``(B, 2)`` (signals), or absent."""
    if box is not None and (box.dim() != 2 or box.shape[1] not in (2, 4)):
        raise ConfigError(
            f"{name} must have shape (B, 4) for images or (B, 2) for signals; got "
            f"{tuple(box.shape)}"
        )


@dataclass
class AugmentParams(_ParamsBase):
    """The random parameters of one :class:`ImageAugment` or :class:`SignalAugment` draw.

    Attributes:
        crop: ``(B, 4)`` float32 ``(top, left, height, width)`` of the crop box as fractions
            of the image height/width for 2-D inputs; ``(B, 2)`` ``(start, length)`` as
            fractions of the signal length for 1-D inputs. ``None``: the whole input.
        flip: ``(B,)`` bool, horizontal flip (images) or time reversal (signals).
            ``None``: no flip.
        noise_seed: ``(B,)`` int64 seed of each sample's additive noise (signals only; see
            :func:`seeded_normal`). ``None``: no noise.
    """

    crop: Tensor | None = None
    flip: Tensor | None = None
    noise_seed: Tensor | None = None

    _dtypes = {"crop": torch.float32, "flip": torch.bool, "noise_seed": torch.int64}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_box("AugmentParams.crop", self.crop)

    @classmethod
    def identity(
        cls, batch_size: int, rank: int = 2, device: torch.device | str = "cpu"
    ) -> AugmentParams:
        """Parameters that leave a batch unchanged: the whole input, no flip, no noise.

        ``rank`` is the number of spatial dimensions: 2 for images, 1 for signals.
        """
        box = [0.0, 0.0, 1.0, 1.0] if rank == 2 else [0.0, 1.0]
        crop = torch.tensor(box, device=device).expand(batch_size, -1).clone()
        return cls(crop=crop, flip=torch.zeros(batch_size, dtype=torch.bool, device=device))


@dataclass
class MixParams(_ParamsBase):
    """The random parameters of one :class:`Mixup` draw.

    Attributes:
        partner: ``(B,)`` int64, the position within the batch of the image mixed into each
            sample. After :meth:`select` it still counts positions in the *original* batch;
            replay selected rows with :meth:`Mixup.apply_pair`.
        ratio: ``(B,)`` float32, the weight of the sample's own image (and label).
        box: ``(B, 4)`` ``(top, left, height, width)`` fractions (``(B, 2)``
            ``(start, length)`` for signals) of the region pasted from the partner; CutMix
            only, ``None`` for mixup.
    """

    partner: Tensor | None = None
    ratio: Tensor | None = None
    box: Tensor | None = None

    _required = ("partner", "ratio")
    _dtypes = {"partner": torch.int64, "ratio": torch.float32, "box": torch.float32}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_box("MixParams.box", self.box)


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


def _check_batch(params: _ParamsBase, x: Tensor, who: str) -> None:
    if len(params) not in (0, x.shape[0]):
        raise ConfigError(
            f"{who}: the parameters hold {len(params)} rows but the batch has {x.shape[0]}; "
            "select the rows of the samples you replay (params.select(index))"
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


def _gamma(shape: float, generator: torch.Generator | None) -> float:
    """One Gamma(shape, 1) draw (Marsaglia & Tsang 2000; boosted for shape < 1)."""
    boost = 1.0
    if shape < 1.0:
        boost = _scalar_uniform(generator) ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(
            torch.randn(1, generator=generator, device=_gen_device(generator), dtype=torch.float64)
        )
        v = (1.0 + c * z) ** 3
        if v <= 0.0:
            continue
        u = _scalar_uniform(generator)
        if u > 0.0 and math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


def _symmetric_beta(alpha: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, alpha) draw from the generator (uniform for alpha = 1)."""
    if alpha == 1.0:
        return _scalar_uniform(generator)
    g1, g2 = _gamma(alpha, generator), _gamma(alpha, generator)
    if g1 + g2 == 0.0:  # both underflowed (tiny alpha): Beta mass sits at 0 and 1
        return 1.0
    return g1 / (g1 + g2)


def _symmetric_beta_cdf(alpha: float, y: Tensor) -> Tensor:
    """The regularized incomplete beta function ``I_y(alpha, alpha)`` for ``y`` in [0, 0.5].

    The hypergeometric series (DLMF 8.17.8) ``I_y(a, b) = y^a (1 - y)^b / (a B(a, b)) *
    sum_n (a + b)_n / (a + 1)_n y^n``: with ``a = b`` and ``y <= 0.5`` the ratio of
    successive terms, ``y (2a + n) / (a + 1 + n)``, is below 1 from the first term on, so
    the sum converges for every ``alpha > 0`` (in about ``-37 / log(2y)`` terms once ``n``
    exceeds ``2 alpha``). Float64, vectorised over ``y``.
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    if bool(((y < 0.0) | (y > 0.5)).any()):
        raise ConfigError(f"_symmetric_beta_cdf needs y in [0, 0.5]; got {y.tolist()}")
    a = float(alpha)
    log_beta = 2.0 * math.lgamma(a) - math.lgamma(2.0 * a)
    prefactor = torch.exp(a * torch.log(y) + a * torch.log1p(-y) - math.log(a) - log_beta)
    term = torch.ones_like(y)
    total = torch.ones_like(y)
    for n in range(_MAX_SERIES_TERMS):
        term = term * ((2.0 * a + n) / (a + 1.0 + n)) * y
        total = total + term
        if bool((term <= 1e-17 * total).all()):
            return prefactor * total
    raise ConfigError(
        f"the Beta({a}, {a}) distribution function did not converge in {_MAX_SERIES_TERMS} "
        "terms at y close to 0.5; use a smaller mixup alpha"
    )


_MAX_SERIES_TERMS = 10**6


# --- counter-based Gaussian noise ------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def mul32(a: Tensor, constant: int) -> Tensor:
    """``(a * constant) mod 2**32`` for int64 ``a`` in [0, 2**32) without int64 overflow."""
    lo, hi = constant & 0xFFFF, constant >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer bijection with good avalanche (lowbias32), on int64 in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seeded_uniform(seeds: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 uniforms in (0, 1): a pure function of each ``(seed, position)``.

    ``seeds`` is ``(B,)`` int64 (any value; its 64 bits are used). Row ``b`` depends only on
    ``seeds[b]``, so one sample's numbers are regenerated alone, on any device, with
    vectorised integer ops (every intermediate value stays in [0, 2**32)).
    """
    seeds = seeds.to(torch.int64)
    lo = seeds & _MASK32
    hi = (seeds >> 32) & _MASK32
    key = mix32(lo ^ mix32(hi ^ 0x243F6A88))
    counter = mix32(torch.arange(n, device=seeds.device, dtype=torch.int64))
    h = mix32(key[:, None] ^ counter[None, :])
    h = mix32((h + key[:, None]) & _MASK32)
    return (h.to(torch.float64) + 0.5) * (1.0 / 2**32)


def seeded_normal(seeds: Tensor, n: int) -> Tensor:
    """``(B, n)`` float64 standard normal numbers from per-sample seeds (Box-Muller).

    Uses :func:`seeded_uniform` positions ``0..n-1`` for the radius and ``n..2n-1`` for the
    angle. Computed in float64 and meant to be rounded to the data's dtype, which hides the
    last-bit differences between vectorised and scalar ``log``/``cos`` on the CPU.
    """
    u = seeded_uniform(seeds, 2 * n)
    radius = torch.sqrt(torch.log(u[:, :n]) * -2.0)
    return radius * torch.cos(u[:, n:] * (2.0 * math.pi))


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



class SignalAugment(_CropAugment):
    """Random resized crop, time reversal and Gaussian noise for ``(B, C, L)`` signals.

    Made for MNIST-1D (Greydanus 2020) and other 1-D inputs: a window of length fraction
    uniform in ``scale`` at a uniform start is resized back to ``L`` (linear interpolation:
    ``grid_sample`` on ``(B, C, 1, L)``), reversed in time with probability ``flip``, and
    ``noise_std`` times standard normal noise is added. The noise of each sample is a pure
    function of its recorded ``noise_seed`` (:func:`seeded_normal`), so replaying one sample
    regenerates exactly its noise. A recorded seed is ignored when ``noise_std`` is 0: the
    noise level belongs to the augmentation, the seed to the draw.

    Args:
        scale: ``(lo, hi)`` range of the window's length fraction, ``0 < lo <= hi <= 1``
            (default ``(0.6, 1.0)``).
        flip: probability of a time reversal, in ``[0, 1]`` (default 0).
        noise_std: standard deviation of the additive noise, ``>= 0`` (default 0: none).
        center_crop: length fraction of the centred window :meth:`center` returns, in
            ``(0, 1]`` (default 1.0: the whole signal, returned unchanged).
    """

    rank = 1

    def __init__(
        self,
        scale: tuple[float, float] = (0.6, 1.0),
        flip: float = 0.0,
        noise_std: float = 0.0,
        center_crop: float = 1.0,
    ) -> None:
        self.scale = _check_scale(scale)
        self.flip = _check_probability("flip", flip)
        std = float(noise_std)
        if not (math.isfinite(std) and std >= 0.0):
            raise ConfigError(f"noise_std must be a finite number >= 0; got {noise_std!r}")
        self.noise_std = std
        self.center_crop = _check_center_crop(center_crop)

    def config(self) -> dict[str, Any]:
        """The constructor options (JSON-serialisable), e.g. for a store's ``meta.json``."""
        return {
            "scale": list(self.scale),
            "flip": self.flip,
            "noise_std": self.noise_std,
            "center_crop": self.center_crop,
        }

    _rank, _layout = 3, "(B, C, L)"
    #: uniforms per view that :meth:`from_uniforms` maps to a window and a reversal
    num_uniforms = 3

    def _center_box(self, c: float) -> list[float]:
        return [(1 - c) / 2, c]

    def _extra(self, params: AugmentParams, batch_size: int,
               generator: torch.Generator | None) -> None:
        """With noise, a ``noise_seed`` (B,) per view, drawn after the windows."""
        if self.noise_std > 0:
            params.noise_seed = torch.randint(
                0, 2**62, (batch_size,), generator=generator, device=_gen_device(generator)
            )

    def from_uniforms(self, u: Tensor) -> AugmentParams:
        """The windows and time reversals that the uniforms ``u`` ``(3, B)`` select.

        Row 0 picks the length, 1 the start, 2 the reversal (see
        :meth:`ImageAugment.from_uniforms`). No noise seed: the caller sets ``noise_seed``.
        """
        _check_uniforms(u, self.num_uniforms, "SignalAugment")
        u = u.to(torch.float64)
        lo, hi = self.scale
        length = lo + (hi - lo) * u[0]
        start = u[1] * (1 - length)
        crop = torch.stack((start, length), dim=1).to(torch.float32)
        return AugmentParams(crop=crop, flip=u[2] < self.flip)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Replay ``params`` on ``x`` (B, C, L) -> (B, C, L), same dtype and device."""
        _check_input(x, 3, "(B, C, L)", "SignalAugment")
        _check_batch(params, x, "SignalAugment.apply")
        b, c, n = x.shape
        crop = params.crop
        if crop is None:
            crop = AugmentParams.identity(b, 1, x.device).crop
        elif crop.shape[1] != 2:
            raise ConfigError(
                f"SignalAugment.apply needs (B, 2) windows (start, length); got "
                f"{tuple(crop.shape)} (parameters of an ImageAugment?)"
            )
        crop = crop.to(x.device)
        flip = params.flip.to(x.device) if params.flip is not None else None
        dtype = _grid_dtype(x)
        gx = _axis(crop[:, 0], crop[:, 1], n, dtype, flip)
        gy = torch.zeros(b, 1, device=x.device, dtype=dtype)
        out = _resample(x.unsqueeze(2), gx, gy).squeeze(2)
        if self.noise_std > 0 and params.noise_seed is not None:
            noise = seeded_normal(params.noise_seed.to(x.device), c * n).view(b, c, n)
            out = out + noise.to(x.dtype) * self.noise_std
        return out



class Mixup:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) within a batch.

    As in the code of Beyer et al. 2022 ("A good teacher is patient and consistent"), one
    ratio ``a ~ Beta(alpha, alpha)`` is drawn per batch, folded to ``a = max(a, 1 - a)``
    (each sample keeps at least half of itself) and shared by all samples, and sample ``i``
    is mixed with sample ``i - 1`` (``partner = roll(arange(B), 1)``).

    * ``mode="mixup"``: ``out = a * x + (1 - a) * x[partner]``;
    * ``mode="cutmix"``: one box per batch with area fraction ``1 - a`` (a square in
      fractions of the height and width, or a segment for signals), placed uniformly so it
      lies inside the image, is pasted from the partner. When the input size is known
      (:meth:`__call__`, or ``size`` in :meth:`sample`) the box is snapped to whole pixels
      and ``ratio`` is the exact kept-area fraction ``1 - box_h * box_w``.

    Works for ``(B, C, L)`` and ``(B, C, H, W)`` batches.

    Args:
        alpha: Beta concentration, ``> 0`` (default 1.0: the ratio is uniform).
        mode: ``"mixup"`` or ``"cutmix"``.
    """

    MODES = ("mixup", "cutmix")

    def __init__(self, alpha: float = 1.0, mode: str = "mixup") -> None:
        a = float(alpha)
        if not (math.isfinite(a) and a > 0.0):
            raise ConfigError(f"alpha (the Beta concentration) must be > 0; got {alpha!r}")
        if mode not in self.MODES:
            raise ConfigError(f"unknown mixing mode {mode!r}; allowed modes: 'mixup', 'cutmix'")
        self.alpha = a
        self.mode = mode

    def config(self) -> dict[str, Any]:
        """The constructor options (JSON-serialisable)."""
        return {"alpha": self.alpha, "mode": self.mode}

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha!r}, mode={self.mode!r})"

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        device: torch.device | str | None = None,
        *,
        size: Sequence[int] | None = None,
    ) -> MixParams:
        """Draw the batch's ratio, partners and (CutMix) box.

        ``size`` is the spatial size of the batch (``(H, W)`` or ``(L,)``); CutMix uses it
        to pick the box's rank and snap it to whole pixels. Without it the box is a
        continuous ``(B, 4)`` image box and :meth:`apply` rounds it to pixels.
        """
        a = _symmetric_beta(self.alpha, generator)
        a = max(a, 1.0 - a)
        gen_device = _gen_device(generator)
        partner = torch.roll(torch.arange(batch_size, device=gen_device), 1)
        box = None
        if self.mode == "cutmix":
            u = _uniform((2, 1), generator)
            kept, box = self.boxes(torch.tensor([a], dtype=torch.float64, device=u.device), u, size)
            a = float(kept[0])
            box = box.expand(batch_size, -1).clone()
        ratio = torch.full((batch_size,), a, dtype=torch.float32, device=gen_device)
        params = MixParams(partner=partner, ratio=ratio, box=box)
        return params.to(device) if device is not None else params

    @staticmethod
    def boxes(
        ratio: Tensor, u: Tensor, size: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """CutMix boxes of area ``1 - ratio`` placed by the uniforms ``u``, one per row.

        ``ratio`` is ``(B,)`` (the own image's share, in [0.5, 1]), ``u`` ``(2, B)`` uniforms
        in [0, 1) (row 0 places the box vertically, or the segment of a signal; row 1
        horizontally). A square of side fraction ``sqrt(1 - ratio)`` (a segment of length
        fraction ``1 - ratio`` for ``size=(L,)``) lies uniformly inside the input; with
        ``size`` it is snapped to whole pixels. Returns the float64 kept-area fractions (the
        exact ``1 - box area`` after snapping) and the float32 boxes ``(B, 4)`` or ``(B, 2)``
        in fractions, as :class:`MixParams` holds them. Elementwise: row ``b`` depends only
        on ``ratio[b]`` and ``u[:, b]`` (a soft-label store derives a view's box from its
        seed instead of storing it).
        """
        if size is not None and len(size) not in (1, 2):
            raise ConfigError(f"CutMix needs a spatial size (H, W) or (L,); got {tuple(size)}")
        _check_uniforms(u, 2, "Mixup.boxes")
        a = ratio.to(device=u.device, dtype=torch.float64)
        u = u.to(torch.float64)
        if size is not None and len(size) == 1:
            (n,) = size
            length = torch.round((1.0 - a) * n)
            start = torch.minimum(torch.floor(u[0] * (n - length + 1)), n - length)
            box = torch.stack((start / n, length / n), dim=1)
            return 1.0 - length / n, box.to(torch.float32)
        side = torch.sqrt(1.0 - a)
        if size is None:
            box = torch.stack((u[0] * (1 - side), u[1] * (1 - side), side, side), dim=1)
            return 1.0 - side * side, box.to(torch.float32)
        h, w = size
        bh, bw = torch.round(side * h), torch.round(side * w)
        top = torch.minimum(torch.floor(u[0] * (h - bh + 1)), h - bh)
        left = torch.minimum(torch.floor(u[1] * (w - bw + 1)), w - bw)
        box = torch.stack((top / h, left / w, bh / h, bw / w), dim=1)
        return 1.0 - (bh * bw) / (h * w), box.to(torch.float32)

    def folded_cdf(self, x: Tensor) -> Tensor:
        """``P(max(a, 1 - a) <= x)`` for ``a ~ Beta(alpha, alpha)``: the law of :meth:`sample`'s
        folded ratio, at ``x`` in [0.5, 1] (float64, same shape).

        By symmetry it is ``1 - 2 I_{1-x}(alpha, alpha)`` with the regularized incomplete
        beta function ``I`` (see :func:`_symmetric_beta_cdf`); for ``alpha = 1`` it is
        ``2x - 1``. A soft-label store draws a view's ratio from it by inversion, so each
        ratio is a pure function of a uniform (:func:`kdforge.teachers.store.ratio_from_uniform`).
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        outside = (x < 0.5) | (x > 1.0)
        if bool(outside.any()):
            raise ConfigError(
                f"Mixup.folded_cdf is defined on [0.5, 1]; got {x[outside][:5].tolist()}"
            )
        return (1.0 - 2.0 * _symmetric_beta_cdf(self.alpha, 1.0 - x)).clamp(0.0, 1.0)

    def apply(self, x: Tensor, params: MixParams) -> Tensor:
        """Mix ``x`` (B, C, L) or (B, C, H, W) with ``x[params.partner]``: same shape/dtype."""
        self._check(x, "Mixup.apply")
        _check_batch(params, x, "Mixup.apply")
        partner = params.partner.to(x.device)  # type: ignore[union-attr]
        if len(partner) and (partner.min() < 0 or partner.max() >= x.shape[0]):
            raise ConfigError(
                f"Mixup.apply: partner indices must lie in [0, {x.shape[0]}); these params "
                "were selected from a larger batch: replay them with apply_pair"
            )
        return self.apply_pair(x, x[partner], params)

    def apply_pair(self, x: Tensor, x_partner: Tensor, params: MixParams) -> Tensor:
        """Mix rows ``x`` with their partners' images ``x_partner`` (same shape).

        Equals :meth:`apply` on the corresponding rows, bit for bit: replay one sample with
        ``apply_pair(x[i:i+1], x[j:j+1], params.select(i))`` where ``j = params.partner[i]``.
        """
        self._check(x, "Mixup.apply_pair")
        if x_partner.shape != x.shape:
            raise ConfigError(
                f"Mixup.apply_pair: x {tuple(x.shape)} and x_partner {tuple(x_partner.shape)} "
                "must have the same shape"
            )
        _check_batch(params, x, "Mixup.apply_pair")
        view = (-1,) + (1,) * (x.dim() - 1)
        if params.box is None:
            ratio = params.ratio.to(device=x.device, dtype=x.dtype).view(view)  # type: ignore[union-attr]
            return x * ratio + x_partner * (1 - ratio)
        mask = self._mask(params.box.to(x.device), x.shape[2:])
        return torch.where(mask, x_partner, x)

    @staticmethod
    def _mask(box: Tensor, size: Sequence[int]) -> Tensor:
        """``(B, 1, *size)`` bool mask of the pixels pasted from the partner."""
        rank = len(size)
        if box.shape[1] != 2 * rank:
            kind = "(B, 2) segments" if rank == 1 else "(B, 4) boxes"
            raise ConfigError(
                f"CutMix on a {rank + 2}-D batch needs {kind}; got box {tuple(box.shape)}: "
                f"draw the params with size={tuple(size)} (as Mixup.__call__ does)"
            )
        box = box.to(torch.float64)
        inside = []
        for d, n in enumerate(size):
            start = torch.round(box[:, d] * n).to(torch.int64)
            stop = start + torch.round(box[:, rank + d] * n).to(torch.int64)
            pos = torch.arange(n, device=box.device)
            inside.append((pos[None, :] >= start[:, None]) & (pos[None, :] < stop[:, None]))
        if rank == 1:
            return inside[0][:, None, :]
        return (inside[0][:, :, None] & inside[1][:, None, :])[:, None]

    def mix_targets(self, targets: Tensor, params: MixParams, num_classes: int,
                    partner_targets: Tensor | None = None) -> Tensor:
        """Soft targets ``(B, K)`` float32: ``ratio * y + (1 - ratio) * y[partner]``.

        ``targets`` is ``(B,)`` int64 class indices (one-hot encoded) or ``(B, K)``
        probabilities (e.g. a teacher's, mixed the same way). ``partner_targets`` (same
        form) gives the partners' targets row by row instead of ``targets[partner]``: for
        partners outside the batch, as with :meth:`apply_pair`.
        """
        probs = self._target_probs(targets, num_classes)
        if len(params) != len(probs):
            raise ConfigError(
                f"Mixup.mix_targets: {len(params)} parameter rows for {len(probs)} targets"
            )
        ratio = params.ratio.to(probs.device)[:, None]  # type: ignore[union-attr]
        if partner_targets is None:
            other = probs[params.partner.to(probs.device)]  # type: ignore[union-attr]
        else:
            other = self._target_probs(partner_targets, num_classes).to(probs.device)
            if other.shape != probs.shape:
                raise ConfigError(
                    f"Mixup.mix_targets: partner_targets {tuple(partner_targets.shape)} must "
                    f"match targets {tuple(targets.shape)}"
                )
        return probs * ratio + other * (1 - ratio)

    @staticmethod
    def _target_probs(targets: Tensor, num_classes: int) -> Tensor:
        """``(B,)`` class indices (one-hot encoded) or ``(B, K)`` probabilities, as float32."""
        if targets.dim() == 1:
            if targets.dtype.is_floating_point or targets.dtype == torch.bool:
                raise ConfigError(f"class targets must be integers; got {targets.dtype}")
            if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
                raise ConfigError(
                    f"targets must lie in [0, {num_classes}); got values from "
                    f"{int(targets.min())} to {int(targets.max())}"
                )
            probs = F.one_hot(targets.to(torch.int64), num_classes).to(torch.float32)
        elif targets.dim() == 2 and targets.shape[1] == num_classes:
            probs = targets.to(torch.float32)
        else:
            raise ConfigError(
                f"targets must be (B,) class indices or (B, {num_classes}) probabilities; got "
                f"{tuple(targets.shape)}"
            )
        return probs

    def __call__(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, MixParams]:
        """Draw parameters for ``x`` (B, C, L) or (B, C, H, W) and mix: ``(mixed, params)``."""
        self._check(x, "Mixup")
        params = self.sample(x.shape[0], generator, x.device, size=tuple(x.shape[2:]))
        return self.apply(x, params), params

    @staticmethod
    def _check(x: Tensor, who: str) -> None:
        if not isinstance(x, Tensor) or x.dim() not in (3, 4):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(
                f"{who} expects a batch of shape (B, C, L) or (B, C, H, W); got {shape}"
            )
        if not x.is_floating_point():
            raise ConfigError(f"{who} expects a floating-point batch; got {x.dtype}")


def make_augment(input_shape: Sequence[int], **options: Any) -> ImageAugment | SignalAugment:
    """The augmentation for samples of ``input_shape``, built with ``options``.

    ``(C, H, W)`` -> :class:`ImageAugment`, ``(C, L)`` -> :class:`SignalAugment`. Other
    ranks and options the chosen class does not take raise :class:`ConfigError`.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a tuple of ints; got {input_shape!r}") from None
    if any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape must have positive sizes; got {shape}")
    if len(shape) == 3:
        cls: type[ImageAugment] | type[SignalAugment] = ImageAugment
    elif len(shape) == 2:
        cls = SignalAugment
    else:
        raise ConfigError(
            f"no augmentation for per-sample input shape {shape}: supported shapes are "
            "(C, H, W) images (ImageAugment) and (C, L) signals (SignalAugment)"
        )
    return call_with_checked_kwargs("augmentation", cls.__name__, cls, options)
