"""Function-matching views of a store: a consistent crop mixed with a partner's view.

Function matching (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022) can run from a store: each stored view is a consistent crop mixed,
by mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) or CutMix
(Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019), with a view of a partner sample, and the stored label is the
teacher's label *of the mixed input*, not a mix of labels. :class:`MixedViews` defines those
views once, for the generator and for the replay (:class:`kdforge.store.StoreView`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError, StoreError
from kdforge.data.augment import (
    AugmentParams,
    ImageAugment,
    MixParams,
    Mixup,
    SignalAugment,
    make_augment,
)
from kdforge.store.quantize import quantize_crop, ratio_code_cdf, ratio_from_uniform
from kdforge.store.seeds import view_seed, view_uniforms

if TYPE_CHECKING:
    from kdforge.store.reader import SoftLabelStore


class MixedViews:
    """The function-matching views of a store: a consistent crop mixed with a partner's view.

    View ``v`` of sample ``i`` is a pure function of ``(store seed, i, v)``: with ``m =
    augment.num_uniforms`` and ``u = view_uniforms(seed, i, v, m + 4)``,

    * ``u[:m]`` is the sample's own crop and flip (``augment.from_uniforms``, then
      :func:`~kdforge.store.quantize_crop`), the record's stored ``crop``/``flags``;
    * ``u[m]`` is the partner ``j = (i + 1 + floor(u[m] (N - 1))) mod N``: uniform over the
      *whole* training set except ``i`` (stored as ``partner``);
    * ``u[m + 1]`` is the ratio (the own input's share): the folded ``Beta(alpha, alpha)``
      ratio of :class:`~kdforge.data.augment.Mixup`, drawn on the store's grid by inversion
      (:func:`~kdforge.store.ratio_from_uniform`; stored as ``ratio``);
    * ``u[m + 2 : m + 4]`` place the CutMix box (:meth:`Mixup.boxes`), whose size follows
      from the stored ratio: the box is derived at replay, never stored.

    The partner is seen in *its own* view ``v``: the crop and flip that record ``(j, v)``
    stores (the same function of ``(seed, j, v)``, so shard A can be labelled before shard
    B that holds ``j`` is) and, for signals with noise, the noise seed ``view_seed(seed, j,
    v)``. The teacher labels ``mix(own view, partner view)``; :meth:`render` is that
    computation, used by the generator and by :class:`StoreView`, which is why the replayed
    input is bit-identical to the labelled one.

    Args:
        augment: the crop augmentation (the store's ``meta["view"]["augment"]``).
        mixup: mixup or CutMix (``meta["view"]["mix"]``).
        store_seed: the store seed.
        num_samples: ``N``, the training set's size (at least 2).
    """

    def __init__(self, augment: ImageAugment | SignalAugment, mixup: Mixup, store_seed: int,
                 num_samples: int) -> None:
        if num_samples < 2:
            raise ConfigError(
                f"function matching mixes each sample with another one; the training set has "
                f"{num_samples} sample(s): use at least 2"
            )
        self.augment = augment
        self.mixup = mixup
        self.store_seed = int(store_seed)
        self.num_samples = int(num_samples)
        self._code_cdf = ratio_code_cdf(mixup.folded_cdf)

    @classmethod
    def from_store(cls, store: SoftLabelStore, input_shape: Sequence[int]) -> MixedViews:
        """The mixed views of a ``has_mix`` store, from its meta (``view`` and ``store_seed``)."""
        view = store.meta.get("view") or {}
        if not isinstance(view, dict) or not isinstance(view.get("mix"), dict):
            raise StoreError(
                f"the store {store.path} holds mixed views (has_mix) but its meta.json records "
                "no 'view.mix' settings (alpha, mode); regenerate it with kdforge soft-labels"
            )
        if "store_seed" not in store.meta:
            raise StoreError(f"the store {store.path} records no 'store_seed'; regenerate it")
        augment = make_augment(tuple(input_shape), **(view.get("augment") or {}))
        return cls(augment, Mixup(**view["mix"]), int(store.meta["store_seed"]),
                   store.num_samples)

    def _uniforms(self, sample: Tensor, view: Tensor) -> Tensor:
        return view_uniforms(self.store_seed, sample, view, self.augment.num_uniforms + 4)

    def _crops(self, u: Tensor) -> AugmentParams:
        params = self.augment.from_uniforms(u[:, : self.augment.num_uniforms].T.contiguous())
        params.crop = quantize_crop(params.crop)
        return params

    def crops(self, sample: Tensor, view: Tensor) -> AugmentParams:
        """The quantised crops and flips of views ``(sample, view)`` (CPU), as stored."""
        return self._crops(self._uniforms(sample, view))

    def draw(self, sample: Tensor, view: Tensor) -> tuple[AugmentParams, Tensor, Tensor]:
        """Own crops and flips, partner sample ids and ratios of views ``(sample, view)``."""
        sample = torch.as_tensor(sample).to("cpu", torch.int64)
        view = torch.as_tensor(view).to("cpu", torch.int64)
        u = self._uniforms(sample, view)
        m = self.augment.num_uniforms
        own = self._crops(u)
        step = torch.floor(u[:, m] * (self.num_samples - 1)).to(torch.int64)
        partner = (sample + 1 + step) % self.num_samples
        ratio = ratio_from_uniform(u[:, m + 1], self._code_cdf)
        return own, partner, ratio

    def mix_params(self, sample: Tensor, view: Tensor, partner: Tensor, ratio: Tensor,
                   size: Sequence[int]) -> MixParams:
        """The mix of views ``(sample, view)`` for inputs of spatial ``size`` (CPU).

        Mixup: the stored ratio. CutMix: the box of area ``1 - ratio`` snapped to ``size``
        and placed by the view's uniforms, with the exact kept-area fraction as ratio.
        """
        partner = torch.as_tensor(partner).to("cpu", torch.int64)
        ratio = torch.as_tensor(ratio).to("cpu", torch.float32)
        if self.mixup.mode != "cutmix":
            return MixParams(partner=partner, ratio=ratio)
        u = self._uniforms(torch.as_tensor(sample).cpu(), torch.as_tensor(view).cpu())
        m = self.augment.num_uniforms
        kept, box = Mixup.boxes(ratio, u[:, m + 2 : m + 4].T.contiguous(), tuple(size))
        return MixParams(partner=partner, ratio=kept.to(torch.float32), box=box)

    def _with_noise(self, params: AugmentParams, sample: Tensor, view: Tensor) -> AugmentParams:
        seed = None
        if getattr(self.augment, "noise_std", 0.0) > 0:
            seed = view_seed(self.store_seed, sample.cpu(), view.cpu())
        return AugmentParams(crop=params.crop, flip=params.flip, noise_seed=seed)

    def render(self, x: Tensor, x_partner: Tensor, sample: Tensor, view: Tensor,
               own: AugmentParams, partner: Tensor, partner_view: AugmentParams,
               ratio: Tensor) -> tuple[Tensor, MixParams]:
        """The mixed inputs of views ``(sample, view)``, and their mix.

        ``x``: the samples' inputs; ``x_partner``: the partners' inputs (row ``b`` is sample
        ``partner[b]``), both on the device the result lives on; ``own`` and
        ``partner_view``: the stored crops and flips of records ``(sample, view)`` and
        ``(partner, view)``; ``ratio``: the stored ratios. Row ``b`` depends only on row ``b``
        of every argument.
        """
        sample, view = sample.cpu(), view.cpu()
        own_x = self.augment.apply(x, self._with_noise(own, sample, view).to(x.device))
        partner_x = self.augment.apply(
            x_partner.to(device=x.device, dtype=x.dtype),
            self._with_noise(partner_view, partner.cpu(), view).to(x.device),
        )
        mix = self.mix_params(sample, view, partner, ratio, tuple(x.shape[2:]))
        return self.mixup.apply_pair(own_x, partner_x, mix.to(x.device)), mix


def view_meta(name: str, augment: ImageAugment | SignalAugment | None,
              mixup: Mixup | None = None, labels: bool = False) -> dict[str, Any]:
    """What a store records as its view (``meta["view"]``), JSON-ready.

    ``{"name", "augment"}`` (the augmentation's options, ``None`` for ``fixed``), plus
    ``"mix"`` (mixup options) and ``"labels"`` for function matching.
    """
    out: dict[str, Any] = {"name": name,
                           "augment": augment.config() if augment is not None else None}
    if mixup is not None:
        out["mix"] = mixup.config()
        out["labels"] = bool(labels)
    return out


__all__ = ["MixedViews", "view_meta"]
