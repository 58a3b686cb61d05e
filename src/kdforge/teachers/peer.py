"""A network that is trained and teaches in the same step (mutual and online schemes)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdforge.core.outputs import Batch, Outputs
from kdforge.core.teacher import NetworkTeacher


class PeerTeacher(NetworkTeacher):
    """Wraps a network that a scheme trains as a teacher of another network.

    Unlike a frozen teacher it follows the step's train/eval mode (its BatchNorm layers
    learn as it trains), and its parameters keep requiring gradients. It is *not* trained
    through this wrapper's outputs: with ``detach=True`` (default, as in deep mutual
    learning, Zhang et al. 2018, where each peer's target is the other's prediction taken
    as a constant) the outputs are cut from the graph. The scheme that owns the peer lists
    it among its trained modules and optimizer groups, so it is checkpointed, evaluated and
    saved like a student.

    Args:
        model: the peer network.
        detach: return outputs without gradient (the peer is trained by its own loss).
        features: layer names to return as features.
    """

    gradients = "peer"

    def __init__(self, model: nn.Module, detach: bool = True, features: Iterable[str] = ()) -> None:
        super().__init__(model, features)
        self.detach = detach

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        out = self.outputs(self.model(inputs))
        return out.detach() if self.detach else out


__all__ = ["PeerTeacher"]
