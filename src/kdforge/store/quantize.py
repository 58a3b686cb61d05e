"""The store's grids for view parameters: crops on ``j / 255``, mixup ratios on
``(255 + j) / 510``.

View parameters are quantised *before* the view is applied and labelled, so replay is
exact: the generator calls :func:`quantize_crop` (and :func:`quantize_ratio` for mixup) on
the drawn parameters, applies the view with the quantised parameters, runs the teacher on
it and stores the same numbers; :meth:`kdforge.store.SoftLabelStore.read` returns
bit-identical float32 values. Crops lie on the grid ``j / 255`` (a crop length of at least
1/255; an end that rounding would push past 1 is pulled back), ratios on ``(255 + j) / 510``.
Function-matching stores draw a ratio on its grid by inversion of a counter-based uniform
(:func:`ratio_from_uniform`), so any process regenerates it alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from kdforge.core.errors import StoreError


def _crop_codes(crop: Tensor) -> Tensor:
    """uint8 grid codes (as int64) of crop fractions, keeping each box inside [0, 1].

    Columns come in (start, length) pairs: images (top, left, height, width) pair column 0
    with 2 and 1 with 3, signals (start, length) pair 0 with 1. A length is at least one
    step; a start + length that rounding pushes past 255 is pulled back to 255 - start.
    """
    q = torch.round(crop.detach().to(torch.float64) * 255.0).clamp(0, 255).to(torch.int64)
    half = q.shape[-1] // 2
    start, length = q[..., :half], q[..., half:]
    length = torch.minimum(length.clamp(min=1), 255 - start.clamp(max=254))
    start = start.clamp(max=254)
    return torch.cat([start, length], dim=-1)


def _crop_from_codes(codes: Tensor | np.ndarray) -> Tensor:
    if isinstance(codes, np.ndarray):  # the read path: numpy, bit-identical to the torch ops
        return torch.from_numpy(codes.astype(np.float32) / np.float32(255.0))
    return codes.to(torch.float32) / 255.0


def quantize_crop(crop: Tensor) -> Tensor:
    """Round crop fractions to the store's grid ``j / 255`` (float32, same shape).

    ``crop`` is ``AugmentParams.crop``: ``(B, 4)`` (top, left, height, width) for images or
    ``(B, 2)`` (start, length) for signals, fractions of the input. The generator must call
    this *before* applying the view, so the view it labels is the view training replays;
    the result is exactly what :meth:`kdforge.store.SoftLabelStore.read` returns, and quantising again
    changes nothing. Lengths are at least 1/255 and a box never ends past 1.
    """
    crop = torch.as_tensor(crop)
    if crop.dim() != 2 or crop.shape[1] not in (2, 4):
        raise StoreError(
            f"quantize_crop expects (B, 4) image or (B, 2) signal crop fractions; got shape "
            f"{tuple(crop.shape)}"
        )
    return _crop_from_codes(_crop_codes(crop)).to(crop.device)


def _ratio_codes(ratio: Tensor) -> Tensor:
    q = torch.round((ratio.detach().to(torch.float64) - 0.5) * 510.0)
    return q.clamp(0, 255).to(torch.int64)


def _ratio_from_codes(codes: Tensor | np.ndarray) -> Tensor:
    if isinstance(codes, np.ndarray):  # the read path: numpy, bit-identical to the torch ops
        return torch.from_numpy((codes.astype(np.float32) + np.float32(255.0))
                                / np.float32(510.0))
    return (codes.to(torch.float32) + 255.0) / 510.0


def quantize_ratio(ratio: Tensor) -> Tensor:
    """Round mixup ratios in [0.5, 1] to the store's grid ``(255 + j) / 510`` (float32).

    ``ratio`` is ``MixParams.ratio`` (the weight of the sample's own image, folded to
    ``>= 0.5`` by :class:`kdforge.data.augment.Mixup`). Call it before mixing, like
    :func:`quantize_crop`; idempotent; values outside [0.5, 1] raise :class:`StoreError`.
    """
    ratio = torch.as_tensor(ratio)
    _check_ratio_range(ratio)
    return _ratio_from_codes(_ratio_codes(ratio)).to(ratio.device)


def ratio_code_cdf(folded_cdf: Callable[[Tensor], Tensor]) -> Tensor:
    """``(255,)`` float64: ``P(quantize_ratio(r) <= (255 + j) / 510)`` for ``j = 0..254``.

    ``folded_cdf`` is the distribution function of the mixup ratio ``r`` on [0.5, 1] (e.g.
    :meth:`kdforge.data.augment.Mixup.folded_cdf`); it is evaluated at the upper edges
    ``(255.5 + j) / 510`` of the values :func:`quantize_ratio` rounds to code ``j``. Pass the
    table to :func:`ratio_from_uniform` (compute it once per distribution).
    """
    upper = (torch.arange(255, dtype=torch.float64) + 255.5) / 510.0
    table = torch.as_tensor(folded_cdf(upper), dtype=torch.float64).reshape(-1)
    if table.shape != (255,) or not bool(torch.isfinite(table).all()) or bool(
        (table[1:] < table[:-1]).any()
    ):
        raise StoreError("folded_cdf must return a finite non-decreasing value per edge")
    return table


def ratio_from_uniform(u: Tensor, code_cdf: Tensor) -> Tensor:
    """Mixup ratios on the store's grid by inversion of uniforms ``u`` in (0, 1): float32.

    ``code_cdf`` is :func:`ratio_code_cdf` of the ratio's distribution. The result has
    exactly the law of ``quantize_ratio(r)`` for ``r`` of that distribution (code ``j`` is
    returned when ``u`` lies in ``[F_{j-1}, F_j)``), and it is a pure function of ``u``: a
    counter-based uniform (:func:`kdforge.data.augment.seeded_uniform`) gives a ratio that
    any process regenerates alone. The values need no further :func:`quantize_ratio`.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    codes = torch.searchsorted(code_cdf.to(u.device), u.contiguous(), right=True)
    return _ratio_from_codes(codes)


def _check_ratio_range(ratio: Tensor) -> None:
    r = ratio.detach().to(torch.float64)
    bad = ~((r >= 0.5 - 1e-6) & (r <= 1.0 + 1e-6))
    if bool(bad.any()):
        raise StoreError(
            f"mixup ratios must lie in [0.5, 1] (the own image's weight, folded with "
            f"max(a, 1 - a)); got {r[bad][:5].tolist()}"
        )


__all__ = ["quantize_crop", "quantize_ratio", "ratio_code_cdf", "ratio_from_uniform"]
