"""The records that flow through a distillation step.

``Outputs`` is what either side (student or teacher) produces for a batch: logits and a dict
of named intermediate features. ``Batch`` is what the data pipeline hands to the step.
``StepResult`` is what one step returns: the loss, its named parts (the same dict is logged),
and both sides' outputs. ``to_outputs`` maps whatever a model's ``forward`` returns into an
``Outputs`` record, so any model can be used unmodified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdforge.core.errors import ConfigError


@dataclass
class Outputs:
    """One side's outputs for a batch.

    Attributes:
        logits: ``(B, K)`` class scores before the softmax.
        features: intermediate outputs by module name (as in ``model.named_modules()``),
            e.g. ``{"layer3": (B, C, H, W)}``.
        probs: ``softmax(logits)`` when the producer already has it, else ``None``. Set
            only with ``logits`` that are normalised log-probabilities (``logits ==
            log(probs)``, as a soft-label store's): losses at T = 1 may then use both as
            they are instead of taking a softmax.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    probs: Tensor | None = None

    def feature(self, name: str, side: str = "model") -> Tensor:
        """The feature ``name``; a ``ConfigError`` listing what was collected if absent."""
        try:
            return self.features[name]
        except KeyError:
            have = ", ".join(sorted(self.features)) or "(none)"
            raise ConfigError(
                f"the {side} produced no feature {name!r}; collected features: {have}. "
                "Name the layer in the loss term so the distiller taps it."
            ) from None

    def detach(self) -> Outputs:
        return Outputs(self.logits.detach(), {k: v.detach() for k, v in self.features.items()},
                       None if self.probs is None else self.probs.detach())


@dataclass
class Batch:
    """One training batch as the step sees it.

    Attributes:
        inputs: the student's input, e.g. ``(B, C, H, W)``.
        targets: ``(B,)`` class indices or ``(B, K)`` class probabilities (mixup), or None.
        teacher_inputs: the teacher's input when it differs from the student's (views).
        index: ``(B,)`` positions of the samples in the data set (memory banks, stores).
        view: the random parameters a view drew for this batch (crops, flips, mixup), so it
            can be replayed; None for un-augmented batches.
    """

    inputs: Tensor
    targets: Tensor | None = None
    teacher_inputs: Tensor | None = None
    index: Tensor | None = None
    view: Any = None

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class StepResult:
    """What one distillation step returns.

    Attributes:
        loss: the scalar to back-propagate: the weighted sum of the loss terms.
        parts: each term's weighted contribution by name (they sum to ``loss``).
        student_outputs: the student's outputs (logits and tapped features).
        teacher_outputs: the teacher's outputs, or None when training without a teacher.
    """

    loss: Tensor
    parts: dict[str, Tensor]
    student_outputs: Outputs
    teacher_outputs: Outputs | None = None


def to_outputs(raw: Any, features: Mapping[str, Tensor] | None = None) -> Outputs:
    """Map a model's raw ``forward`` result into an :class:`Outputs` record.

    Accepted: a logits tensor; an ``Outputs``; a tuple/list whose first element is the
    logits; a mapping or object with a ``logits`` entry/attribute (Hugging Face style).
    """
    features = dict(features or {})
    if isinstance(raw, Outputs):
        raw.features.update(features)
        return raw
    if isinstance(raw, Tensor):
        return Outputs(raw, features)
    if isinstance(raw, Mapping) and "logits" in raw:
        return Outputs(raw["logits"], features)
    if hasattr(raw, "logits") and isinstance(raw.logits, Tensor):
        return Outputs(raw.logits, features)
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], Tensor):
        return Outputs(raw[0], features)
    raise ConfigError(
        f"cannot find logits in a model output of type {type(raw).__name__}; return a "
        "tensor, a tuple whose first item is the logits, or a mapping with a 'logits' key"
    )


def first_tensor(value: Any) -> Tensor:
    """The first tensor inside a module's output (tensors, tuples, lists, mappings)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            try:
                return first_tensor(item)
            except TypeError:
                continue
    raise TypeError(f"no tensor in a module output of type {type(value).__name__}")


def as_device(batch: Batch, device: torch.device | str, non_blocking: bool = True) -> Batch:
    """A copy of ``batch`` with every tensor moved to ``device``."""

    def move(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device, non_blocking=non_blocking)

    return Batch(move(batch.inputs), move(batch.targets), move(batch.teacher_inputs),
                 move(batch.index), batch.view)
