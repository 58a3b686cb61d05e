"""``dfad`` and ``dafl``: data-free distillation, a generator in place of the training set.

No training input is ever read: the training set is replaced by
:class:`~kdforge.schemes.base.TrainingInputsForbidden` (any read raises) and the batches are
noise codes ``z ~ N(0, I)`` (a :class:`~kdforge.data.sources.GeneratorSource`) that a
generator ``G`` (:mod:`kdforge.models.generators`) turns into inputs. Each batch runs two
phases, each with its own optimizer: ``generator`` (G is updated through the frozen
teacher, and through the student for DFAD) then ``student`` (the student learns on
``G(z)`` taken as constant inputs). The teacher stays in eval mode: neither its weights
nor its BatchNorm statistics change.

**DFAD** — Fang, Song, Wang, Shen, Wang & Song, "Data-Free Adversarial Distillation"
(arXiv:1912.11006, 2019). A min-max game on the mean absolute error of the logits,

    L_MAE(z) = 1/(B K) sum_b || T(G(z_b)) - S(G(z_b)) ||_1 ,
    G: max L_MAE  (loss -L_MAE),        S: min L_MAE on G(z) detached.

As in the paper, the student takes k steps per generator step (``student_steps``, paper
k = 5): the generator's phase runs on every k-th batch, the student's on every batch.

**DAFL** — Chen, Wang, Xu, Yang, Liu, Shi, Xu, Xu & Tian, "Data-Free Learning of Student
Networks" (ICCV 2019). The teacher is a fixed discriminator; G minimises

    L_G = L_oh + alpha L_a + beta L_ie,
    L_oh = 1/B sum_b CE(y_T^b, argmax y_T^b)      (confident, one-hot-like predictions)
    L_a  = -1/B ||f_T||_1                          (large features before the classifier)
    L_ie = -H(1/B sum_b softmax(y_T^b))            (balanced classes over the batch)

(paper: alpha = 0.1, beta = 5), and the student is distilled on G's samples with the run's
losses (``kd``; the paper's cross-entropy to the teacher's soft outputs is ``kd`` at T=1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdforge.config import RunConfig, StoreTeacherConfig
from kdforge.core.outputs import Batch, Outputs, StepResult
from kdforge.core.source import BatchSource
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.data.sources import GeneratorSource, noise_batches
from kdforge.losses.base import LOSSES, LossTerm
from kdforge.models.generators import build_generator
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StepInputs,
    TrainingInputsForbidden,
    register,
    require,
)
from kdforge.teachers.module import ModuleTeacher

# -- the losses, from the papers' formulas -------------------------------------------------------


def l1_discrepancy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """DFAD's ``L_MAE``: mean absolute difference of the logits over batch and classes."""
    return (student_logits.float() - teacher_logits.float()).abs().mean()


def one_hot_loss(teacher_logits: Tensor) -> Tensor:
    """DAFL's ``L_oh``: CE of the teacher's outputs against their own argmax."""
    logits = teacher_logits.float()
    return F.cross_entropy(logits, logits.argmax(dim=1))


def activation_loss(features: Tensor) -> Tensor:
    """DAFL's ``L_a = -1/B ||f_T||_1``, taken as the mean of ``|f_T|`` per element."""
    return -features.float().abs().mean()


def information_entropy_loss(teacher_logits: Tensor) -> Tensor:
    """DAFL's ``L_ie = -H(p_mean)``, ``p_mean`` the batch mean of the teacher's softmax."""
    mean = F.softmax(teacher_logits.float(), dim=1).mean(dim=0)
    return (mean * torch.log(mean.clamp_min(1e-12))).sum()


def penultimate_layer(model: nn.Module) -> str:
    """``"NAME@input"`` of the model's last ``nn.Linear``: the features before the classifier."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    require(bool(names), f"dafl cannot find the classifier of the teacher "
                         f"({type(model).__name__} has no nn.Linear); give scheme.teacher_layer")
    return f"{names[-1]}@input"


# -- the step ------------------------------------------------------------------------------------


class GeneratorStep(TrainStep):
    """A generator and a student against a frozen teacher; subclasses give the generator's
    loss (:meth:`generator_loss`) and the student's (:meth:`student_loss`)."""

    def __init__(self, student: nn.Module, generator: nn.Module, teacher: ModuleTeacher,
                 generator_optim: dict[str, Any], *, student_steps: int = 1) -> None:
        super().__init__()
        self.student, self.generator, self.teacher = student, generator, teacher
        self.generator_optim = dict(generator_optim)
        self.student_steps = int(student_steps)

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "generator": self.generator}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("generator", list(self.generator.parameters()),
                           optim=self.generator_optim, every=self.student_steps),
                OptimGroup("student", list(self.student.parameters()))]

    @property
    def eval_teacher(self) -> nn.Module:
        return self.teacher

    def train(self, mode: bool = True) -> GeneratorStep:
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics never move
        return self

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        if phase == "generator":
            x = self.generator(batch.inputs)
            t, s = self.teacher(x), self.student(x)
            loss, parts = self.generator_loss(s, t)
        else:
            with torch.no_grad():
                x = self.generator(batch.inputs)
                t = self.teacher(x)
            s = self.student(x)
            loss, parts = self.student_loss(Outputs(s), t, Batch(x))
        return StepResult(loss, {k: v.detach() for k, v in parts.items()}, Outputs(s), t)

    def generator_loss(self, student_logits: Tensor, teacher: Outputs
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def student_loss(self, student: Outputs, teacher: Outputs, batch: Batch
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class DFADStep(GeneratorStep):
    """DFAD: G maximises the L1 logit discrepancy, the student minimises it."""

    def generator_loss(self, student_logits, teacher):
        gap = l1_discrepancy(student_logits, teacher.logits)
        return -gap, {"l1": gap}

    def student_loss(self, student, teacher, batch):
        gap = l1_discrepancy(student.logits, teacher.logits)
        return gap, {"l1": gap}


class DAFLStep(GeneratorStep):
    """DAFL: G makes inputs the teacher classifies confidently, with strong features and
    balanced classes; the student is distilled on them with ``terms``."""

    def __init__(self, student, generator, teacher, generator_optim, *, layer: str,
                 terms: list[LossTerm], alpha: float, beta: float, oh_weight: float) -> None:
        super().__init__(student, generator, teacher, generator_optim)
        self.layer, self.terms = layer, nn.ModuleList(terms)
        self.alpha, self.beta, self.oh_weight = float(alpha), float(beta), float(oh_weight)

    def state_modules(self) -> dict[str, nn.Module]:
        return {**self.trained_modules(), "terms": self.terms}

    @torch.no_grad()
    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        was = self.training
        self.eval()
        try:
            x = self.generator(batch.inputs)
            t, s = self.teacher(x), Outputs(self.student(x))
            for term in self.terms:
                term.setup(s, t, Batch(x))
        finally:
            self.train(was)

    def generator_loss(self, student_logits, teacher):
        oh = one_hot_loss(teacher.logits)
        act = activation_loss(teacher.features[self.layer])
        ie = information_entropy_loss(teacher.logits)
        loss = self.oh_weight * oh + self.alpha * act + self.beta * ie
        return loss, {"oh": oh, "a": act, "ie": ie}

    def student_loss(self, student, teacher, batch):
        parts = {term.name: term.weight_at(self.progress) * term(student, teacher, batch)
                 for term in self.terms}
        return torch.stack(list(parts.values())).sum(), parts


# -- the schemes ---------------------------------------------------------------------------------


class DataFreeOptions(SchemeOptions):
    z_dim: int = Field(100, ge=1, description="noise dimension of the generator")
    width: int = Field(64, ge=2, description="channels of the generator's first feature map")
    steps_per_epoch: int = Field(50, ge=1, description="generated batches per epoch")
    generator_optim: dict[str, Any] = Field(
        default_factory=lambda: {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        description="the generator's optimizer (the student uses the run's 'optim')")


class DFADOptions(DataFreeOptions):
    student_steps: int = Field(5, ge=1, description="student steps per generator step "
                               "(the paper's k)")


class DAFLOptions(DataFreeOptions):
    alpha: float = Field(0.1, ge=0.0, description="weight of the activation loss L_a")
    beta: float = Field(5.0, ge=0.0, description="weight of the information entropy L_ie")
    oh_weight: float = Field(1.0, ge=0.0, description="weight of the one-hot loss L_oh")
    teacher_layer: str | None = Field(
        None, description="teacher features of L_a (default: the input of its last Linear)")


class DataFreeScheme(Scheme):
    """What DFAD and DAFL share: no training input, a generator source, a frozen teacher."""

    Step: type[GeneratorStep] = GeneratorStep
    options: DataFreeOptions

    def check(self, cfg: RunConfig) -> None:
        n = self.name
        require(bool(cfg.teachers), f"{n} distils a trained teacher without data: add a "
                                    "'teacher' section, e.g. {run: runs/digits-teacher}")
        require(len(cfg.teachers) == 1 and not isinstance(cfg.teachers[0], StoreTeacherConfig),
                f"{n} needs one model teacher (a run or a model with weights) to back-"
                "propagate through; a soft-label store or an ensemble cannot be used")
        labelled = [c.name for c in cfg.losses if not LOSSES.get(c.name).needs_teacher]
        require(not labelled, f"{n} is data-free: no labels exist, so the losses {labelled} "
                              "cannot be used; remove them (e.g. losses: [{name: kd, T: 1}])")
        require(cfg.view is None, f"{n} trains on generated inputs; remove the 'view' section")

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        self.check(cfg)
        return data.with_sets(train=TrainingInputsForbidden(data.train, self.name), val=None)

    def build_source(self, cfg: RunConfig, data: RunData, source: BatchSource) -> BatchSource:
        return GeneratorSource(noise_batches(cfg.data.batch_size, (self.options.z_dim,)),
                               steps_per_epoch=self.options.steps_per_epoch)

    def build_step(self, inputs: StepInputs) -> TrainStep:
        teacher = inputs.teacher
        require(isinstance(teacher, ModuleTeacher),
                f"{self.name} needs one model teacher, got {type(teacher).__name__}")
        assert isinstance(teacher, ModuleTeacher)
        generator = build_generator(inputs.data.input_shape, z_dim=self.options.z_dim,
                                    width=self.options.width)
        return self.make_step(inputs, teacher.model, generator)

    def make_step(self, inputs: StepInputs, teacher: nn.Module,
                  generator: nn.Module) -> GeneratorStep:
        raise NotImplementedError

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        from kdforge.schemes.data_free_report import data_free_report

        assert isinstance(step, GeneratorStep)
        return data_free_report(cfg, step, trainer, data)


@register("dfad", paper="Fang et al. 2019, Data-Free Adversarial Distillation (arXiv:1912.11006)")
class DFAD(DataFreeScheme):
    """DFAD: a generator and the student play min-max on the L1 distance of the logits."""

    Options = DFADOptions
    options: DFADOptions

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        require(not cfg.losses, "dfad trains the student with its own L1 logit discrepancy; "
                                "set 'losses: []'")

    def make_step(self, inputs, teacher, generator):
        return DFADStep(inputs.student, generator, ModuleTeacher(teacher, gradients="input"),
                        self.options.generator_optim, student_steps=self.options.student_steps)


@register("dafl", paper="Chen et al. 2019, Data-Free Learning of Student Networks (ICCV)")
class DAFL(DataFreeScheme):
    """DAFL: the teacher as a fixed discriminator trains a generator (L_oh, L_a, L_ie);
    the student is distilled on the generated inputs."""

    Options = DAFLOptions
    options: DAFLOptions

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        require(bool(cfg.losses), "dafl distils the student with the run's losses; give one, "
                                  "e.g. losses: [{name: kd, T: 1}]")

    def make_step(self, inputs, teacher, generator):
        layer = self.options.teacher_layer or penultimate_layer(teacher)
        frozen = ModuleTeacher(teacher, features=[layer], gradients="input")
        o = self.options
        return DAFLStep(inputs.student, generator, frozen, o.generator_optim, layer=layer,
                        terms=inputs.terms, alpha=o.alpha, beta=o.beta, oh_weight=o.oh_weight)


__all__ = ["DAFL", "DAFLStep", "DFAD", "DFADStep", "GeneratorStep", "activation_loss",
           "information_entropy_loss", "l1_discrepancy", "one_hot_loss", "penultimate_layer"]
