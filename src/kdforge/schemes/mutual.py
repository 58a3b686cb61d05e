"""``dml``: deep mutual learning, N peers trained together, each taught by the others.

Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018. Peer ``k`` minimises

    L_k = CE(y, p_k) + 1/(N-1) * sum_{l != k} T^2 KL(p_l^T || p_k^T),    p^T = softmax(z / T)

(their Eq. 10 with the KL of Eq. 2; the paper uses T = 1). Each peer's targets ``p_l`` are
the other peers' current predictions taken as constants: peer ``k`` gets gradients *from*
the others' outputs but none flows *through* them into peer ``l``'s weights. All peers are
updated in the same step from predictions made before that step (the simultaneous form of
the paper's alternating updates; with one optimizer over all peers it is one backward pass
and one ``DistributedDataParallel`` all-reduce, so it runs unchanged under ``torchrun``).

Peers may be of different architectures (the student section is peer 0, ``peers`` lists
the others). Every peer is evaluated and saved, and so is their ensemble (the mean of the
peers' probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdforge.config import RunConfig
from kdforge.core.errors import ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs, StepResult
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.engine.checkpoint import save_weights
from kdforge.engine.distributed import env_from_torchrun
from kdforge.models.runs import WEIGHTS, save_run_model
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StepInputs,
    evaluate_on,
    register,
    require,
)
from kdforge.teachers.ensemble import EnsembleTeacher


def mutual_losses(logits: Sequence[Tensor], targets: Tensor | None, T: float = 1.0
                  ) -> tuple[list[Tensor], list[Tensor]]:
    """Per peer, ``CE(y, p_k)`` and ``T^2 / (N-1) * sum_{l != k} KL(p_l^T || p_k^T)`` (batch
    mean) for peer logits ``(B, K)``; the other peers' logits enter detached."""
    n = len(logits)
    ces, kls = [], []
    for k, z in enumerate(logits):
        log_p = F.log_softmax(z.float() / T, dim=-1)
        kl = z.new_zeros((), dtype=torch.float32)
        for j, other in enumerate(logits):
            if j != k:
                q = F.softmax(other.detach().float() / T, dim=-1)
                kl = kl + F.kl_div(log_p, q, reduction="batchmean")
        kls.append(kl * (T * T) / (n - 1))
        ces.append(F.cross_entropy(z.float(), targets) if targets is not None
                   else z.new_zeros((), dtype=torch.float32))
    return ces, kls


class MutualStep(TrainStep):
    """N peers, each trained with CE plus KL to the others' predictions (see module doc).

    Args:
        peers: the networks (two or more), each mapping the batch's inputs to ``(B, K)``.
        names: their names (default ``peer0``, ``peer1``, ...); the first is evaluated.
        T: the softmax temperature of the mimicry term (paper: 1).
        ce_weight, kl_weight: weights of the two terms.
    """

    def __init__(self, peers: Sequence[nn.Module], names: Sequence[str] | None = None, *,
                 T: float = 1.0, ce_weight: float = 1.0, kl_weight: float = 1.0) -> None:
        super().__init__()
        require(len(peers) >= 2, f"deep mutual learning needs at least two peers, got "
                                 f"{len(peers)}; list the others under scheme.peers")
        names = list(names) if names is not None else [f"peer{i}" for i in range(len(peers))]
        require(len(names) == len(peers) and len(set(names)) == len(names),
                f"peer names must be unique, one per peer: {names}")
        self.names = names
        self.peers = nn.ModuleList(peers)
        self.T, self.ce_weight, self.kl_weight = float(T), float(ce_weight), float(kl_weight)

    def trained_modules(self) -> dict[str, nn.Module]:
        return dict(zip(self.names, self.peers, strict=True))

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("peers", list(self.peers.parameters()))]

    @torch.no_grad()
    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        was = self.training
        self.eval()
        try:
            shapes = {name: tuple(peer(batch.inputs).shape[1:])
                      for name, peer in zip(self.names, self.peers, strict=True)}
        finally:
            self.train(was)
        if len(set(shapes.values())) != 1:
            raise ShapeMismatchError(
                f"the peers predict different numbers of classes: {shapes}; every peer of "
                "deep mutual learning must predict the same classes")

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        logits = [peer(batch.inputs) for peer in self.peers]
        ces, kls = mutual_losses(logits, batch.targets, self.T)
        parts: dict[str, Tensor] = {}
        for name, ce, kl in zip(self.names, ces, kls, strict=True):
            parts[f"{name}/ce"] = self.ce_weight * ce
            parts[f"{name}/kl"] = self.kl_weight * kl
        loss = torch.stack(list(parts.values())).sum()
        return StepResult(loss, parts, Outputs(logits[0]), None)


class PeerSpec(SchemeOptions):
    """Another peer: ``{name: cnn1d, channels: [32, 64]}`` (model options beside ``name``)."""

    model_config = SchemeOptions.model_config | {"extra": "allow"}
    name: str


class MutualOptions(SchemeOptions):
    peers: list[PeerSpec] = Field(description="the peers besides the student (peer 0)")
    T: float = Field(1.0, gt=0.0, description="temperature of the KL (paper: 1)")
    ce_weight: float = Field(1.0, ge=0.0)
    kl_weight: float = Field(1.0, ge=0.0)


@register("dml", paper="Zhang et al. 2018, Deep Mutual Learning (CVPR)")
class DeepMutualLearning(Scheme):
    """Deep mutual learning: N peers trained together, each with CE + KL to the others."""

    Options = MutualOptions

    def build_step(self, inputs: StepInputs) -> TrainStep:
        require(inputs.teacher is None, "dml trains its peers from each other; remove the "
                                        "'teacher' section")
        require(len(self.options.peers) >= 1, "dml needs at least one more peer under "
                                              "scheme.peers (two networks in all)")
        peers = [inputs.student] + [inputs.make_model(p.name, dict(p.model_extra or {}))
                                    for p in self.options.peers]
        return MutualStep(peers, ["student"] + [f"peer{i + 1}" for i in range(len(peers) - 1)],
                          T=self.options.T, ce_weight=self.options.ce_weight,
                          kl_weight=self.options.kl_weight)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        assert isinstance(step, MutualStep)
        k = data.num_classes
        specs = [(cfg.student.name, cfg.student.options)] + [
            (p.name, dict(p.model_extra or {})) for p in self.options.peers]
        records = []
        for (name, peer), (arch, options) in zip(step.trained_modules().items(), specs,
                                                 strict=True):
            test = evaluate_on(trainer, peer, data.test, num_classes=k)
            records.append({"variant": name, "student": arch, "student_options": options,
                            "test_accuracy": 100.0 * test["accuracy"], "agreement": None})
        ensemble = EnsembleTeacher(list(step.peers), combine="mean_probs")
        test = evaluate_on(trainer, ensemble, data.test, num_classes=k)
        records.append({"variant": "ensemble", "student": "+".join(a for a, _ in specs),
                        "student_options": {}, "test_accuracy": 100.0 * test["accuracy"],
                        "agreement": None})
        self._save_peers(step, trainer, data, specs)
        return {"records": records}

    @staticmethod
    def _save_peers(step: MutualStep, trainer: Any, data: RunData,
                    specs: list[tuple[str, dict[str, Any]]]) -> None:
        """Each further peer as a loadable run model in ``RUN/peerN/`` (model.json too)."""
        if trainer.run_dir is None or not env_from_torchrun().is_main:
            return
        for name, peer, (arch, options) in zip(step.names[1:], list(step.peers)[1:], specs[1:],
                                               strict=True):
            folder = trainer.run_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(peer, folder / WEIGHTS)
            save_run_model(folder, peer, name=arch, options=options,
                           num_classes=data.num_classes, input_shape=data.input_shape)


__all__ = ["DeepMutualLearning", "MutualStep", "mutual_losses"]
