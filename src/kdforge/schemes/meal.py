"""``meal``: MEAL V2, a student distilled from a teacher ensemble's soft labels with a
discriminator on the output probabilities, and no hard labels.

Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet
without Tricks", 2020 (arXiv:2009.08453). With ``K`` teachers, the ensemble's prediction is
the mean of their probabilities,

    p_e(x) = 1/K sum_t p_t(x),

the student ``p_s`` is taught by the KL divergence to it (no one-hot label, no CE),

    L_KL = 1/N sum_i KL(p_e(x_i) || p_s(x_i)),

and a discriminator ``D(p) = sigmoid(f(p))`` (``f`` three fully-connected layers) learns to
tell the ensemble's probabilities (label 1) from the student's (label 0) by binary cross
entropy,

    L_D = -1/2 [ 1/N sum_i log D(p_e(x_i)) + 1/N sum_i log(1 - D(p_s(x_i))) ],

while the student learns to fool it:

    L_S = L_KL + lambda * L_adv,    L_adv = -1/N sum_i log D(p_s(x_i)).

Each step has two phases, each with its own optimizer: ``discriminator`` (``L_D``, the
student's probabilities taken as constants and the student's BatchNorm statistics left
as they were) then ``student`` (``L_S`` on the updated discriminator; only the student is
stepped). ``L_KL`` is the run's ``losses`` (``kd`` with ``T: 1`` is exactly the KL above;
other teacher terms may be added, a hard-label ``ce`` is refused as the paper trains
without labels). The teachers are ``teacher:`` (one run or model, or a list: their
``mean_probs`` ensemble); they stay frozen. The discriminator is saved as
``model-discriminator.safetensors`` and checkpointed with the student.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdforge.config import OptimConfig, RunConfig, StoreTeacherConfig
from kdforge.core.outputs import Batch, StepResult
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.distill.distiller import Distiller
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StageResult,
    StepInputs,
    record_of,
    register,
    require,
)


def discriminator_loss(d_teacher: Tensor, d_student: Tensor) -> Tensor:
    """``L_D``: BCE of the discriminator's logits, teacher inputs labelled 1 and student
    inputs 0, each side a batch mean, the two sides averaged."""
    real = F.binary_cross_entropy_with_logits(d_teacher.float(), torch.ones_like(d_teacher))
    fake = F.binary_cross_entropy_with_logits(d_student.float(), torch.zeros_like(d_student))
    return 0.5 * (real + fake)


def adversarial_loss(d_student: Tensor) -> Tensor:
    """``L_adv = -mean log D(p_s)``: the student's probabilities labelled as the teachers'."""
    return F.binary_cross_entropy_with_logits(d_student.float(), torch.ones_like(d_student))


class Discriminator(nn.Module):
    """``f``: three fully-connected layers from ``K`` probabilities to one logit (``D =
    sigmoid(f)``, applied inside the losses)."""

    def __init__(self, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))

    def forward(self, probs: Tensor) -> Tensor:
        return self.net(probs).squeeze(-1)


@contextmanager
def kept_buffers(module: nn.Module) -> Iterator[None]:
    """Run a forward pass without changing ``module``'s buffers (BatchNorm statistics)."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old in zip(module.buffers(), saved, strict=True):
                b.copy_(old)


class MealStep(TrainStep):
    """The two-phase MEAL V2 step (see the module docstring).

    Args:
        distiller: the student, the frozen teacher (ensemble) and the KL terms.
        discriminator: the network on probabilities, one logit per sample.
        adversarial_weight: ``lambda``.
        discriminator_optim: the discriminator's optimizer settings (``None``: the run's).
    """

    def __init__(self, distiller: Distiller, discriminator: nn.Module, *,
                 adversarial_weight: float = 1.0, discriminator_optim: Any = None) -> None:
        super().__init__()
        require(distiller.teacher is not None, "meal needs a teacher: add a 'teacher' section")
        self.distiller = distiller
        self.discriminator = discriminator
        self.adversarial_weight = float(adversarial_weight)
        self.discriminator_optim = discriminator_optim

    @property
    def student(self) -> nn.Module:
        return self.distiller.student

    @property
    def teacher(self) -> nn.Module | None:
        return self.distiller.teacher

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.distiller.student, "discriminator": self.discriminator}

    def state_modules(self) -> dict[str, nn.Module]:
        return {**self.trained_modules(), "terms": self.distiller.terms}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("discriminator", list(self.discriminator.parameters()),
                           optim=self.discriminator_optim),
                OptimGroup("student", list(self.distiller.trainable_parameters()))]

    @property
    def eval_teacher(self) -> nn.Module | None:
        return self.distiller.eval_teacher

    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        self.distiller.prepare(batch, context)

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        if phase == "discriminator":
            with torch.no_grad():
                teacher_out = self.distiller.teach(batch)
                assert teacher_out is not None
                with kept_buffers(self.distiller.student):  # updated once, by the student phase
                    student_out = self.distiller.student_outputs(batch.inputs)
            d_t = self.discriminator(F.softmax(teacher_out.logits.float(), dim=-1))
            d_s = self.discriminator(F.softmax(student_out.logits.float(), dim=-1))
            loss = discriminator_loss(d_t, d_s)
            return StepResult(loss, {"bce": loss}, student_out, teacher_out)
        self.distiller.progress = self.progress
        result = self.distiller.step(batch)
        d_s = self.discriminator(F.softmax(result.student_outputs.logits.float(), dim=-1))
        adv = self.adversarial_weight * adversarial_loss(d_s)
        return StepResult(result.loss + adv, {**result.parts, "adversarial": adv},
                          result.student_outputs, result.teacher_outputs)


class MealOptions(SchemeOptions):
    hidden: int = Field(64, ge=1, description="width of the discriminator's two hidden layers")
    adversarial_weight: float = Field(1.0, ge=0.0, description="lambda, the weight of the "
                                      "student's adversarial term")
    discriminator_optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(name="adam", lr=1e-3, weight_decay=0.0),
        description="the discriminator's optimizer (default: adam, lr 1e-3)")


@register("meal", paper="Shen & Savvides 2020, MEAL V2: Boosting Vanilla ResNet-50 to 80%+ "
                        "Top-1 Accuracy on ImageNet without Tricks (arXiv:2009.08453)")
class MealV2(Scheme):
    """MEAL V2: KL to the teachers' mean probabilities plus a discriminator, no labels."""

    Options = MealOptions

    def check(self, cfg: RunConfig) -> None:
        require(bool(cfg.teachers), "meal distils a teacher ensemble: add a 'teacher' section "
                                    "(a trained run, or a list of them)")
        require(not any(isinstance(t, StoreTeacherConfig) for t in cfg.teachers),
                "meal's discriminator needs the teachers' predictions on every batch, which a "
                "soft-label store does not replay as probabilities of trained networks: give "
                "the teacher runs themselves (teacher: {run: DIR} or a list)")
        require(cfg.ensemble == "mean_probs",
                "MEAL V2 averages the teachers' probabilities: set ensemble: mean_probs")
        require(not any(loss.name == "ce" for loss in cfg.losses),
                "MEAL V2 trains without hard labels: remove the 'ce' loss (the default "
                "losses are [ce]; use losses: [{name: kd, T: 1}])")

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        self.check(cfg)  # the first hook a run calls: refused before anything is written
        return data

    def build_step(self, inputs: StepInputs) -> TrainStep:
        self.check(inputs.cfg)
        require(any(t.needs_teacher for t in inputs.terms),
                f"meal's losses {[t.name for t in inputs.terms]} do not use the teacher; use "
                "losses: [{name: kd, T: 1}] (the KL to the ensemble)")
        distiller = Distiller(inputs.student, inputs.teacher, inputs.terms,
                              eval_teacher=inputs.eval_teacher)
        options = self.options
        assert isinstance(options, MealOptions)
        return MealStep(distiller, Discriminator(inputs.data.num_classes, options.hidden),
                        adversarial_weight=options.adversarial_weight,
                        discriminator_optim=options.discriminator_optim)

    def records(self, cfg: RunConfig, result: StageResult) -> list[dict[str, Any]]:
        options = self.options
        assert isinstance(options, MealOptions)
        return [record_of(result, cfg.student.name, cfg.student.options,
                          teachers=len(cfg.teachers),
                          adversarial_weight=options.adversarial_weight)]


__all__ = ["Discriminator", "MealStep", "MealV2", "adversarial_loss", "discriminator_loss",
           "kept_buffers"]
