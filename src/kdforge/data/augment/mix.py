"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) and CutMix
(Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019) within a batch, with the symmetric Beta draws of their ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.data.augment.base import _check_uniforms, _gen_device, _scalar_uniform, _uniform
from kdforge.data.augment.params import MixParams, _check_batch


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
        ratio is a pure function of a uniform (:func:`kdforge.store.ratio_from_uniform`).
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


__all__ = ["Mixup"]
