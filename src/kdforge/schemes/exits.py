"""``byot``: be your own teacher, self-distillation from a network's deepest classifier to
auxiliary exits attached after its shallower sections.

Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation", ICCV 2019 (arXiv:1905.08094). Exit
``i`` (a bottleneck and a classifier on the output of a shallow layer) has the softmax
``q_i^T = softmax(z_i / T)`` and the hint ``F_i`` (its bottleneck feature, adapted to the
size of the deepest feature ``F_C``). The network is trained with (their Sec. 3.2)

    L = CE(q_C, y) + sum_{i < C} [ (1 - alpha) CE(q_i, y) + alpha KL(q_C^T || q_i^T)
                                   + lambda ||F_i - F_C||_2^2 ]

where ``C`` is the network's own (deepest) classifier, trained on the labels alone (the
paper sets alpha = lambda = 0 for it). The KL is the batch mean; as in the paper there is
no ``T^2`` factor. ``||.||_2^2`` is the squared L2 norm of each sample's (flattened)
difference, averaged over the batch. The deepest classifier is the teacher: ``q_C`` and
``F_C`` enter the shallow exits' terms as constants, so those terms train the exits and
the layers before them, never the deepest classifier. Defaults are the paper's settings as
its public code runs them: ``T = 3``, ``alpha = 0.3``, ``lambda = 0.03``.

Exits are module names (``kdforge list layers MODEL``) read with forward hooks: the
network is not rewritten, its ``model.safetensors`` is the plain network, and the heads
are saved beside it as ``model-exits.safetensors`` (and checkpointed). ``F_C`` is, by
default, the *input of the network's last* ``nn.Linear`` (its classifier), e.g.
``fc@input``; ``scheme.feature`` names another layer. The report holds one record per exit
(test accuracy, agreement with the final classifier, the parameters run up to the exit plus
its head, and the median latency of a forward pass stopped at the exit, at batch 1), one
for the final classifier and one for the ensemble of all classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdforge.config import RunConfig
from kdforge.core.outputs import Batch, Outputs, StepResult, to_outputs
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.core.taps import FeatureTap
from kdforge.engine.metrics import measure_latency
from kdforge.models import count_parameters
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StepInputs,
    evaluate_on,
    register,
    require,
)
from kdforge.schemes.exit_heads import (
    ExitEnsemble,
    ExitHead,
    ExitModel,
    firing_order,
    parameters_run,
)

#: The latency of every record is measured at this batch size.
LATENCY_BATCH = 1


def byot_losses(exit_logits: Sequence[Tensor], exit_hints: Sequence[Tensor], final_logits: Tensor,
                final_feature: Tensor, targets: Tensor | None, *, T: float = 3.0,
                alpha: float = 0.3, hint_weight: float = 0.03) -> dict[str, list[Tensor]]:
    """The weighted terms of the module docstring's loss, as lists: ``"ce"``, ``"kl"`` and
    ``"hint"`` (one per exit) and ``"final"`` (one: the deepest classifier's CE). The
    deepest classifier's logits and feature enter the exits' terms detached."""
    zero = final_logits.new_zeros((), dtype=torch.float32)
    teacher = F.softmax(final_logits.detach().float() / T, dim=-1)
    target_f = final_feature.detach().float().flatten(1)
    out: dict[str, list[Tensor]] = {"ce": [], "kl": [], "hint": []}
    for z, hint in zip(exit_logits, exit_hints, strict=True):
        ce = F.cross_entropy(z.float(), targets) if targets is not None else zero
        kl = F.kl_div(F.log_softmax(z.float() / T, dim=-1), teacher, reduction="batchmean")
        sq = (hint.float().flatten(1) - target_f).pow(2).sum(1).mean()
        out["ce"].append((1.0 - alpha) * ce)
        out["kl"].append(alpha * kl)
        out["hint"].append(hint_weight * sq)
    out["final"] = [F.cross_entropy(final_logits.float(), targets) if targets is not None
                    else zero]
    return out


def default_feature(network: nn.Module) -> str:
    """The input of the network's last ``nn.Linear`` (its classifier): ``"fc@input"``."""
    linears = [name for name, m in network.named_modules() if isinstance(m, nn.Linear) and name]
    require(bool(linears), f"{type(network).__name__} has no nn.Linear classifier whose input "
                           "could be the deepest feature; set scheme.feature to a layer name")
    return f"{linears[-1]}@input"


class SelfDistillStep(TrainStep):
    """A network with auxiliary exits, trained with the loss of the module docstring.

    Args:
        network: any classifier (``x -> (B, K)`` logits); it is not modified.
        exits: layer names (``model.named_modules()``, or ``"path@input"``), shallow first.
        feature: the deepest feature ``F_C`` the hints match (default: the input of the
            last ``nn.Linear``).
        T, alpha, hint_weight: the paper's temperature, KL weight and hint weight lambda.
        width: the exit bottlenecks' width (default: the tapped feature's channels).

    The heads are built in :meth:`prepare` from the tapped shapes; that is also where an
    exit on the final layer, or one that runs after ``feature``, is refused.
    """

    def __init__(self, network: nn.Module, exits: Sequence[str], feature: str | None = None, *,
                 T: float = 3.0, alpha: float = 0.3, hint_weight: float = 0.03,
                 width: int | None = None) -> None:
        super().__init__()
        exits = list(exits)
        require(len(exits) >= 1, "byot needs at least one exit: list shallow layers under "
                                 "scheme.exits, e.g. [blocks.0, blocks.1] "
                                 "(`kdforge list layers MODEL` prints the names)")
        require(len(set(exits)) == len(exits), f"scheme.exits names a layer twice: {exits}")
        self.network = network
        self.feature = feature or default_feature(network)
        require(self.feature not in exits, f"{self.feature!r} is the deepest feature the exits "
                                           "learn from; it cannot be an exit too")
        self.exit_names = exits
        self.T, self.alpha, self.hint_weight, self.width = float(T), float(alpha), float(
            hint_weight), width
        self.heads = nn.ModuleList()
        self.exit_shapes: dict[str, list[int]] = {}
        # unknown names are refused here
        self._tap = FeatureTap(network, [*exits, self.feature], role="network")

    # -- the TrainStep contract -----------------------------------------------------------
    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.network, "exits": self.heads}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("student", [*self.network.parameters(), *self.heads.parameters()])]

    def eval_module(self) -> nn.Module:
        return self.network

    @torch.no_grad()
    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        """Check where the exits are (a probe pass in eval mode) and build their heads."""
        was = self.training
        self.network.eval()
        try:
            order = firing_order(self.network, [*self.exit_names, self.feature], batch.inputs)
        finally:
            self.network.train(was)
        ranks = {name: i for i, (name, _) in enumerate(order)}
        tensors = dict(order)
        logits = tensors[""]
        for name in self.exit_names:
            require(name in ranks, f"exit {name!r} did not run in the forward pass of "
                                   f"{type(self.network).__name__}; exits must be layers the "
                                   "forward pass calls")
            out = tensors[name]
            require(not (out.shape == logits.shape and out.data_ptr() == logits.data_ptr()),
                    f"exit {name!r} is the final layer of {type(self.network).__name__} (its "
                    "output is the network's logits); exits go on shallower layers, the final "
                    "classifier is the teacher")
            require(ranks[name] < ranks.get(self.feature, len(order)),
                    f"exit {name!r} runs after the deepest feature {self.feature!r}; exits must "
                    "be shallower layers (or set scheme.feature to a deeper one)")
        require(self.feature in ranks, f"the deepest feature {self.feature!r} did not run in "
                                       "the forward pass; set scheme.feature to a layer it calls")
        self.exit_shapes = {n: list(tensors[n].shape[1:]) for n in self.exit_names}
        if len(self.heads) == len(self.exit_names):
            return
        hint_size = tensors[self.feature].flatten(1).shape[1]
        for name in self.exit_names:
            head = ExitHead(tuple(tensors[name].shape[1:]), hint_size, logits.shape[1],
                            self.width)
            self.heads.append(head.to(batch.inputs.device))

    def exit_outputs(self, inputs: Tensor) -> tuple[Outputs, list[Tensor], list[Tensor]]:
        """The network's outputs (with the exits' and deepest features), and per exit its
        logits and hint."""
        logits = to_outputs(self.network(inputs)).logits
        features = self._tap.pop()
        heads = [head(features[name]) for name, head in zip(self.exit_names, self.heads,
                                                               strict=True)]
        return (Outputs(logits, features), [z for z, _ in heads], [h for _, h in heads])

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        require(len(self.heads) == len(self.exit_names),
                "the exit heads are built on a first batch: call step.prepare(batch) first")
        out, exit_logits, hints = self.exit_outputs(batch.inputs)
        terms = byot_losses(exit_logits, hints, out.logits, out.feature(self.feature),
                            batch.targets, T=self.T, alpha=self.alpha,
                            hint_weight=self.hint_weight)
        parts: dict[str, Tensor] = {"final/ce": terms["final"][0]}
        for i, name in enumerate(self.exit_names):
            for kind in ("ce", "kl", "hint"):
                parts[f"{name}/{kind}"] = terms[kind][i]
        return StepResult(torch.stack(list(parts.values())).sum(), parts, out, None)

    def exit_model(self, i: int) -> ExitModel:
        """``x -> logits`` of exit ``i`` (the network stopped after the exit's layer)."""
        return ExitModel(self.network, self.exit_names[i], self.heads[i])


class ByotOptions(SchemeOptions):
    exits: list[str] = Field(default_factory=list, description="layers the exits read, "
                             "shallow first (`kdforge list layers MODEL`)")
    feature: str | None = Field(None, description="the deepest feature the hints match "
                                "(default: the input of the last nn.Linear, e.g. fc@input)")
    T: float = Field(3.0, gt=0.0, description="softmax temperature of the KL (paper: 3)")
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="KL weight; CE gets 1 - alpha")
    hint_weight: float = Field(0.03, ge=0.0, description="lambda, weight of the feature hint")
    width: int | None = Field(None, ge=1, description="exit bottleneck width (default: the "
                              "tapped feature's channels)")


@register("byot", paper="Zhang et al. 2019, Be Your Own Teacher (ICCV)")
class BeYourOwnTeacher(Scheme):
    """Self-distillation: the network's deepest classifier teaches exits on shallow layers."""

    Options = ByotOptions

    def check(self, cfg: RunConfig) -> None:
        """What the config alone shows (the exits' places are checked on a first batch)."""
        require(len(self.options.exits) >= 1, "byot needs at least one exit: list shallow "
                "layers under scheme.exits, e.g. [blocks.0, blocks.1] "
                "(`kdforge list layers MODEL` prints the names)")
        require(cfg.teacher is None, "byot is its own teacher (the deepest classifier "
                                     "teaches the exits); remove the 'teacher' section")
        require([loss.name for loss in cfg.losses] == ["ce"],
                "byot computes its own losses (CE, KL to the deepest classifier, feature "
                "hints); remove the 'losses' section and set scheme.alpha, scheme.T and "
                "scheme.hint_weight instead")

    def build_step(self, inputs: StepInputs) -> TrainStep:
        self.check(inputs.cfg)
        o = self.options
        return SelfDistillStep(inputs.student, o.exits, o.feature, T=o.T, alpha=o.alpha,
                               hint_weight=o.hint_weight, width=o.width)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        assert isinstance(step, SelfDistillStep)
        k, net, device = data.num_classes, step.network, trainer.device
        example = torch.zeros(LATENCY_BATCH, *data.input_shape, device=device)
        base = {"student": cfg.student.name, "student_options": cfg.student.options,
                "latency_batch": LATENCY_BATCH}

        def record(variant: str, model: nn.Module, params: int,
                   agreement: float | None = None) -> dict[str, Any]:
            model.eval()  # a new wrapper would put the network back in training mode
            test = evaluate_on(trainer, model, data.test, num_classes=k,
                               teacher=None if agreement is not None else net)
            if agreement is None:
                agreement = 100.0 * test["agreement"]
            return {"variant": variant, "exit": variant, **base,
                    "test_accuracy": 100.0 * test["accuracy"], "agreement": agreement,
                    "params": params, "latency_ms": measure_latency(model, example,
                                                                    device=device)}

        was = net.training
        net.eval()  # no BatchNorm statistics change while the exits are measured
        try:
            records = []
            for i, name in enumerate(step.exit_names):
                with torch.no_grad():
                    params = parameters_run(net, name, example)
                records.append(record(name, step.exit_model(i),
                                      params + count_parameters(step.heads[i])))
            records.append(record("final", net, count_parameters(net), agreement=100.0))
            records.append(record("ensemble", ExitEnsemble(net, step.exit_names, step.heads),
                                  count_parameters(net) + count_parameters(step.heads)))
        finally:
            net.train(was)
        heads = [{"layer": n, "shape": step.exit_shapes[n], "width": h.adapt.in_features}
                 for n, h in zip(step.exit_names, step.heads, strict=True)]
        return {"feature": step.feature, "exits": heads, "records": records}


__all__ = ["BeYourOwnTeacher", "SelfDistillStep", "byot_losses", "default_feature"]
