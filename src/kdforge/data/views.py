"""The teaching settings of Beyer et al. 2022 as ``View`` policies.

"Knowledge distillation: A good teacher is patient and consistent" (Beyer, Zhai, Royer,
Markeeva, Anil & Kolesnikov, CVPR 2022) compares what the teacher and the student see:

- ``fixed``: the teacher sees one fixed view of each image (the whole image, or a central
  crop), so its outputs could be computed once; the student sees random augmentations.
- ``independent``: teacher and student each see their own random augmentation.
- ``consistent``: both see the same random augmentation.
- ``function_matching``: consistent, plus mixup between the images of the batch; both see
  the identical mixed image and, by default, no ground-truth label enters the loss.

A view turns a batch into the student's input, the teacher's input and the targets, on the
training device, and records every random parameter it drew (crop boxes, flips, noise seeds,
mixup partners and ratio) in ``batch.view``, so any view can be replayed exactly (the
soft-label store builds on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch
from kdforge.core.registry import Registry
from kdforge.data.augment import AugmentParams, MixParams, Mixup, make_augment

VIEWS: Registry[type[View]] = Registry("view")


@dataclass
class ViewRecord:
    """The parameters a view drew for one batch.

    Attributes:
        student: augmentation of the student's input.
        teacher: augmentation of the teacher's input; ``None`` when the teacher sees the
            student's input (consistent views) or the fixed, un-augmented view.
        mix: the mixup/CutMix pairing applied after augmentation (function matching).
    """

    student: AugmentParams
    teacher: AugmentParams | None = None
    mix: MixParams | None = None


class View:
    """Base of the teaching settings; ``view(batch, generator) -> batch``.

    Args:
        input_shape: one sample's shape, ``(C, H, W)`` or ``(C, L)``; picks the augmentation.
        **augment: options of the augmentation (``scale``, ``flip``, ``ratio`` for images,
            ``noise_std`` for signals; see :mod:`kdforge.data.augment`).
    """

    name: ClassVar[str] = "view"
    #: Whether the student and teacher inputs may differ (the teacher needs its own input).
    separate_teacher_input: ClassVar[bool] = True

    def __init__(self, input_shape: tuple[int, ...], **augment: Any) -> None:
        self.augment = make_augment(tuple(input_shape), **augment)

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augment!r})"


def _with(batch: Batch, inputs: Tensor, teacher_inputs: Tensor | None, targets: Tensor | None,
          record: ViewRecord) -> Batch:
    return Batch(inputs, targets, teacher_inputs, batch.index, view=record)


@VIEWS.register("fixed", source="Beyer et al. 2022, fixed teacher")
class FixedView(View):
    """Teacher sees one fixed view (whole image or central crop); the student a random one."""

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        student, params = self.augment(batch.inputs, generator)
        return _with(batch, student, self.augment.center(batch.inputs), batch.targets,
                     ViewRecord(params))


@VIEWS.register("independent", source="Beyer et al. 2022, independent noise")
class IndependentView(View):
    """Teacher and student each see their own random augmentation of the image."""

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        student, s_params = self.augment(batch.inputs, generator)
        teacher, t_params = self.augment(batch.inputs, generator)
        return _with(batch, student, teacher, batch.targets, ViewRecord(s_params, t_params))


@VIEWS.register("consistent", source="Beyer et al. 2022, consistent teaching")
class ConsistentView(View):
    """Teacher and student see the same random augmentation."""

    separate_teacher_input = False

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        views, params = self.augment(batch.inputs, generator)
        return _with(batch, views, None, batch.targets, ViewRecord(params))


@VIEWS.register("function_matching", source="Beyer et al. 2022, function matching")
class FunctionMatchingView(View):
    """Consistent augmentation plus mixup within the batch; no labels unless ``labels``.

    As the paper's code: one ratio ``a ~ Beta(alpha, alpha)`` per batch, ``a = max(a, 1-a)``,
    each image mixed with its neighbour (roll by one); teacher and student see the identical
    mixed image. ``labels=True`` keeps mixed one-hot targets ``(B, K)`` (for a CE term);
    ``mode="cutmix"`` pastes a box of the neighbour instead.
    """

    separate_teacher_input = False

    def __init__(self, input_shape: tuple[int, ...], *, labels: bool = False,
                 alpha: float = 1.0, mode: str = "mixup", num_classes: int | None = None,
                 **augment: Any) -> None:
        super().__init__(input_shape, **augment)
        self.mixup = Mixup(alpha=alpha, mode=mode)
        self.labels = labels
        self.num_classes = num_classes

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        views, params = self.augment(batch.inputs, generator)
        mixed, mix = self.mixup(views, generator)
        targets = None
        if self.labels and batch.targets is not None:
            k = self.num_classes or int(batch.targets.max()) + 1
            targets = self.mixup.mix_targets(batch.targets, mix, k)
        return _with(batch, mixed, None, targets, ViewRecord(params, None, mix))


def build_view(name: str, input_shape: tuple[int, ...], num_classes: int | None = None,
               **options: Any) -> View:
    """The view registered as ``name``; bad names and options raise ``ConfigError``."""
    cls = VIEWS.get(name)
    if cls is FunctionMatchingView:
        options.setdefault("num_classes", num_classes)
    try:
        return cls(tuple(input_shape), **options)
    except TypeError as exc:  # an option neither the view nor the augmentation takes
        raise ConfigError(f"view {name!r}: {exc}") from None


def one_hot_targets(targets: Tensor, num_classes: int) -> Tensor:
    """``(B,)`` class indices -> ``(B, K)`` float one-hot (for soft-target losses)."""
    return F.one_hot(targets, num_classes).float()


__all__ = ["VIEWS", "ConsistentView", "FixedView", "FunctionMatchingView", "IndependentView",
           "View", "ViewRecord", "build_view"]
