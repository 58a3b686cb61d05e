"""The teacher contract: anything that maps a batch's teacher input to ``Outputs``.

It lives in ``core`` because the engine reads it (evaluation measures fidelity to a
teacher) while the teachers themselves live above the engine's imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

from torch import Tensor, nn

from kdforge.core.outputs import Batch, Outputs, to_outputs
from kdforge.core.taps import FeatureTap

#: How gradients flow through a teacher:
#:   ``"none"``: frozen, run without an autograd graph (the default);
#:   ``"input"``: frozen weights and BatchNorm statistics, but the graph is kept so that
#:   gradients reach the teacher's *input* (a generator trained against the teacher);
#:   ``"peer"``: a network that is trained in the same step and teaches (mutual learning).
GradientMode = Literal["none", "input", "peer"]


class Teacher(nn.Module):
    """Base of every teacher: a frozen module, an ensemble, a soft-label store, a peer.

    A frozen teacher (``gradients`` ``"none"`` or ``"input"``) is always in eval mode:
    ``train()`` on it, or on a step holding it, leaves it in eval mode. ``forward(inputs,
    batch)`` returns the teacher's ``Outputs`` for ``inputs`` (the batch is there for
    teachers that look samples up by index).
    """

    #: False for teachers that only know the training samples (a soft-label store): they
    #: cannot label held-out data, so fidelity is not measured against them.
    labels_any_input: ClassVar[bool] = True
    gradients: GradientMode = "none"

    def train(self, mode: bool = True) -> Teacher:
        return super().train(mode if self.gradients == "peer" else False)

    def require_features(self, names: Iterable[str]) -> None:
        """Make later forward passes return the outputs of these layers as features."""
        names = list(names)
        if names:
            raise NotImplementedError(f"{type(self).__name__} cannot provide features {names}")

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        raise NotImplementedError


class NetworkTeacher(Teacher):
    """A teacher that runs a network: holds it and taps its named layers as features."""

    def __init__(self, model: nn.Module, features: Iterable[str] = ()) -> None:
        super().__init__()
        self.model = model
        self._tap = FeatureTap(model, role="teacher")
        self.require_features(features)

    def require_features(self, names: Iterable[str]) -> None:
        for name in names:
            self._tap.add(name)

    def outputs(self, raw: object) -> Outputs:
        """The network's raw output with the features tapped in that forward pass."""
        return to_outputs(raw, self._tap.pop() if self._tap.names else None)


__all__ = ["GradientMode", "NetworkTeacher", "Teacher"]
