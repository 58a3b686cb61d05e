"""Random resized crops, time reversal and counter-based Gaussian noise of 1-D signals."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.rng import seeded_normal
from kdforge.data.augment.base import (
    _axis,
    _check_center_crop,
    _check_input,
    _check_probability,
    _check_scale,
    _check_uniforms,
    _CropAugment,
    _gen_device,
    _grid_dtype,
    _resample,
)
from kdforge.data.augment.params import AugmentParams, _check_batch


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


__all__ = ["SignalAugment"]
