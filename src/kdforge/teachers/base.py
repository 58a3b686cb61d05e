"""The teacher contract: anything that maps a batch's teacher input to ``Outputs``."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdforge.core.outputs import Batch, Outputs


class Teacher(nn.Module):
    """Base of every teacher: a frozen module, an ensemble, a soft-label store, a peer.

    A teacher is always in eval mode: ``train()`` on it (or on a ``Distiller`` holding it)
    leaves it in eval mode. ``forward(inputs, batch)`` returns the teacher's ``Outputs``
    for ``inputs`` (the batch is there for teachers that look samples up by index).
    """

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def require_features(self, names: Iterable[str]) -> None:
        """Make later forward passes return the outputs of these layers as features."""
        names = list(names)
        if names:
            raise NotImplementedError(f"{type(self).__name__} cannot provide features {names}")

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        raise NotImplementedError
