"""``mpl``: Meta Pseudo Labels, a teacher trained from how much its pseudo labels help the student.

Pham, Dai, Xie, Luong & Le, "Meta Pseudo Labels", CVPR 2021. A fraction of the training set
keeps its labels ``(x_l, y_l)``; the rest ``x_u`` is unlabelled. Teacher ``T(.; phi)`` and
student ``S(.; theta)`` are trained together, from scratch, each step in two phases:

1. *student*: the teacher draws hard pseudo labels ``y^_u ~ T(x_u; phi)`` (sampled from its
   softmax, or its argmax) and the student takes one step on them,
   ``theta' = theta - eta_S grad_theta CE(y^_u, S(x_u; theta))``;
2. *teacher*: the teacher is updated with the first-order form of the paper's Appendix A,

       grad_phi = h * grad_phi CE(y^_u, T(x_u; phi)) + grad_phi CE(y_l, T(x_l; phi)),
       h = eta_S (grad_theta' CE(y_l, S(x_l; theta')))^T grad_theta CE(y^_u, S(x_u; theta))
         ~ CE(y_l, S(x_l; theta)) - CE(y_l, S(x_l; theta'))

   (a first-order Taylor expansion of the student's labelled loss around ``theta'``): ``h``
   is how much the student's step on the pseudo labels lowered its loss on labelled data.
   A helpful pseudo label (``h > 0``) is made more likely, a harmful one less. The second
   term is the teacher's supervised loss. The paper's UDA consistency term for the teacher
   and its final fine-tuning of the student on the labelled data are left out.

The labels of the unlabelled part are never given to the step: its batches carry inputs only
(:class:`SemiBatch`). ``h`` is the measured change of the labelled loss (the form the
paper's implementation uses) and is exact whatever the student's optimizer.

The student is evaluated (agreement is with the MPL teacher); the teacher's weights are
written to ``model-teacher.safetensors``; both are checkpointed. ``supervised_only: true``
trains the student alone on the same labelled fraction (the benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdforge.config import RunConfig
from kdforge.core.outputs import Batch, Outputs, StepResult
from kdforge.core.source import BatchSource, SourceContext
from kdforge.core.step import OptimGroup, TrainStep
from kdforge.engine.checkpoint import save_weights
from kdforge.engine.distributed import env_from_torchrun
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StepInputs,
    evaluate_on,
    register,
    require,
)

TEACHER_WEIGHTS = "model-teacher.safetensors"


# -- the labelled / unlabelled split ---------------------------------------------------------------
def split_labelled(targets: Tensor, fraction: float, num_classes: int,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """Stratified split: per class, ``round(fraction * n_c)`` samples (drawn with ``seed``)
    keep their labels. Returns ``(labelled, unlabelled)`` sorted index tensors; refuses a
    split that leaves a class without a labelled sample."""
    targets = torch.as_tensor(targets).reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    labelled = []
    for k in range(num_classes):
        members = torch.nonzero(targets == k).reshape(-1)
        take = int(round(fraction * len(members)))
        require(take >= 1, f"mpl: labelled_fraction {fraction} leaves class {k} with no "
                           f"labelled sample ({len(members)} in the training set); raise "
                           "scheme.labelled_fraction or use more training data")
        labelled.append(members[torch.randperm(len(members), generator=generator)[:take]])
    lab = torch.cat(labelled).sort().values
    mask = torch.ones(len(targets), dtype=torch.bool)
    mask[lab] = False
    return lab, torch.nonzero(mask).reshape(-1)


@dataclass
class SemiBatch(Batch):
    """A labelled batch (``inputs``, ``targets``) with an unlabelled batch beside it
    (``unlabelled``: inputs only)."""

    unlabelled: Tensor | None = None


class SemiSupervisedSource(BatchSource):
    """Per step, a labelled batch and an unlabelled batch.

    An epoch is one pass over the unlabelled set (a permutation drawn from ``seed + epoch``,
    shared by the ranks, rank ``r`` of ``W`` taking positions ``r, r+W, ...``); labelled
    batches are drawn from consecutive permutations of the labelled set seeded by the
    epoch's seed. So an epoch's batches depend only on ``(seed, epoch, rank)`` and a
    resumed run sees what an uninterrupted one saw. The unlabelled set's targets are
    never read.

    Args:
        labelled, unlabelled: data sets with ``__getitems__`` (kdforge data sets).
        batch_size, labelled_batch_size: global sizes of the two batches.
    """

    def __init__(self, labelled: Dataset, unlabelled: Dataset, batch_size: int,
                 labelled_batch_size: int) -> None:
        self.labelled, self.unlabelled = labelled, unlabelled
        self.batch_size, self.labelled_batch_size = batch_size, labelled_batch_size
        self.num_samples = len(unlabelled)  # type: ignore[arg-type]

    def bind(self, context: SourceContext) -> None:
        super().bind(context)
        w = context.world_size
        require(self.batch_size % w == 0 and self.labelled_batch_size % w == 0,
                f"mpl: batch sizes {self.batch_size} and {self.labelled_batch_size} must "
                f"divide over {w} processes")
        self.local_u, self.local_l = self.batch_size // w, self.labelled_batch_size // w
        self.steps = max(1, len(self.unlabelled) // self.batch_size)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.steps

    def _inputs(self, indices: Tensor) -> Tensor:
        return self.unlabelled.__getitems__(indices.tolist())["input"]  # type: ignore[attr-defined]

    def _make(self, lab: Tensor, unlab: Tensor) -> SemiBatch:
        device = self.context.device
        raw = self.labelled.__getitems__(lab.tolist())  # type: ignore[attr-defined]
        batch = SemiBatch(raw["input"].to(device), raw["target"].to(device),
                          unlabelled=self._inputs(unlab).to(device))
        batch = self.prepare_inputs(batch)  # type: ignore[assignment]
        if self.context.channels_last and batch.unlabelled.dim() == 4:
            batch.unlabelled = batch.unlabelled.contiguous(memory_format=torch.channels_last)
        return batch

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        ctx = self.context
        shared = torch.Generator().manual_seed(ctx.seed + epoch)
        order = torch.randperm(len(self.unlabelled), generator=shared)  # type: ignore[arg-type]
        mine = order[ctx.rank::ctx.world_size]
        local = torch.Generator().manual_seed(seed)
        n_lab = len(self.labelled)  # type: ignore[arg-type]
        need = self.steps * self.local_l
        stream = torch.cat([torch.randperm(n_lab, generator=local)
                            for _ in range(-(-need // n_lab))])
        for i in range(self.steps):
            yield self._make(stream[i * self.local_l:(i + 1) * self.local_l],
                             mine[i * self.local_u:(i + 1) * self.local_u])

    def probe(self, size: int) -> Batch:
        n = min(8, size)
        return self._make(torch.arange(min(n, len(self.labelled))),  # type: ignore[arg-type]
                          torch.arange(min(n, len(self.unlabelled))))  # type: ignore[arg-type]

    def ordered(self) -> Iterable[Batch] | None:
        return None


# -- the loss --------------------------------------------------------------------------------------
def _wide(logits: Tensor) -> Tensor:
    """Logits in at least single precision (half-precision ones upcast) for the losses."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _sample(logits: Tensor) -> Tensor:
    return torch.multinomial(F.softmax(_wide(logits), dim=-1), 1).reshape(-1)


def _argmax(logits: Tensor) -> Tensor:
    return logits.argmax(dim=-1)


#: How the teacher turns its logits into hard pseudo labels (scheme option ``pseudo_labels``).
PSEUDO_LABELS: dict[str, Callable[[Tensor], Tensor]] = {"sample": _sample, "argmax": _argmax}


def mpl_coefficient(loss_before: Tensor, loss_after: Tensor) -> Tensor:
    """``h = CE(y_l, S(x_l; theta)) - CE(y_l, S(x_l; theta'))``: the first-order MPL
    coefficient (positive when the student's pseudo-label step helped on labelled data)."""
    return (loss_before - loss_after).detach()


def mpl_teacher_loss(h: Tensor, teacher_unlabelled: Tensor, pseudo: Tensor,
                     teacher_labelled: Tensor, targets: Tensor,
                     mpl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(h * CE(y^_u, T(x_u)), CE(y_l, T(x_l)))``: the teacher's MPL and supervised terms;
    their gradient is the paper's first-order teacher gradient."""
    mpl = mpl_weight * h * F.cross_entropy(_wide(teacher_unlabelled), pseudo)
    return mpl, F.cross_entropy(_wide(teacher_labelled), targets)


class MetaPseudoLabelsStep(TrainStep):
    """Student and teacher of Meta Pseudo Labels, phases ``student`` then ``teacher`` (see
    the module docstring). ``last_h`` holds the latest coefficient ``h``.

    Args:
        student, teacher: the two networks (both trained, the student evaluated).
        pseudo_labels: ``"sample"`` (paper) or ``"argmax"``.
        mpl_weight: weight of the teacher's MPL term.
        teacher_optim: the teacher's optimizer settings (``None``: the run's).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, pseudo_labels: str = "sample",
                 mpl_weight: float = 1.0, teacher_optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher
        self.pseudo = PSEUDO_LABELS[pseudo_labels]
        self.mpl_weight = float(mpl_weight)
        self.teacher_optim = teacher_optim
        self._pending: tuple[Tensor, Tensor] | None = None
        self.last_h: Tensor | None = None

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("student", list(self.student.parameters())),
                OptimGroup("teacher", list(self.teacher.parameters()), optim=self.teacher_optim)]

    @property
    def eval_teacher(self) -> nn.Module:
        return self.teacher

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        require(isinstance(batch, SemiBatch) and batch.unlabelled is not None,
                "mpl needs batches with an unlabelled part (its SemiSupervisedSource)")
        assert isinstance(batch, SemiBatch) and batch.unlabelled is not None
        if phase == "teacher":
            return self._teacher_phase(batch)
        return self._student_phase(batch)

    def _student_phase(self, batch: SemiBatch) -> StepResult:
        with torch.no_grad():
            pseudo = self.pseudo(self.teacher(batch.unlabelled))
            labelled = self.student(batch.inputs)
            before = F.cross_entropy(_wide(labelled), batch.targets)
        self._pending = (pseudo, before)
        loss = F.cross_entropy(_wide(self.student(batch.unlabelled)), pseudo)
        return StepResult(loss, {"pseudo_ce": loss.detach(), "labelled_ce": before},
                          Outputs(labelled))

    def _teacher_phase(self, batch: SemiBatch) -> StepResult:
        require(self._pending is not None, "mpl: the teacher phase runs after the student's")
        assert self._pending is not None
        pseudo, before = self._pending
        self._pending = None
        with torch.no_grad():
            labelled = self.student(batch.inputs)
            after = F.cross_entropy(_wide(labelled), batch.targets)
        h = self.last_h = mpl_coefficient(before, after)
        mpl, supervised = mpl_teacher_loss(h, self.teacher(batch.unlabelled), pseudo,
                                           self.teacher(batch.inputs), batch.targets,
                                           self.mpl_weight)
        return StepResult(mpl + supervised, {"mpl": mpl.detach(), "ce": supervised.detach(),
                                             "h": h}, Outputs(labelled))


class SupervisedStep(TrainStep):
    """The baseline: the student alone, CE on the labelled batches (unlabelled ignored)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("student", list(self.student.parameters()))]

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        logits = self.student(batch.inputs)
        loss = F.cross_entropy(_wide(logits), batch.targets)
        return StepResult(loss, {"ce": loss.detach()}, Outputs(logits))


# -- the scheme ------------------------------------------------------------------------------------
class TeacherModel(SchemeOptions):
    """The teacher network: ``{name: resnet8}`` (model options beside ``name``)."""

    model_config = SchemeOptions.model_config | {"extra": "allow"}
    name: str


class MPLOptions(SchemeOptions):
    labelled_fraction: float = Field(0.1, description="share of the training set that keeps "
                                                      "its labels (stratified), in (0, 1)")
    split_seed: int = Field(0, description="seed of the labelled / unlabelled split")
    labelled_batch_size: int | None = Field(None, gt=0, description="labelled batch size "
                                            "(default: data.batch_size)")
    teacher_model: TeacherModel | None = Field(None, description="the teacher network, "
                                               "trained from scratch (default: as the student)")
    teacher_optim: dict[str, Any] | None = Field(None, description="the teacher's optimizer "
                                                 "(default: the run's optim)")
    pseudo_labels: str = Field("sample", description="'sample' (paper) or 'argmax'")
    mpl_weight: float = Field(1.0, ge=0.0, description="weight of the teacher's MPL term")
    supervised_only: bool = Field(False, description="the baseline: the student on the "
                                  "labelled fraction alone")


@register("mpl", paper="Pham et al. 2021, Meta Pseudo Labels (CVPR)")
class MetaPseudoLabels(Scheme):
    """Meta Pseudo Labels: teacher and student trained together on partly labelled data."""

    Options = MPLOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        require(0.0 < o.labelled_fraction < 1.0,
                f"mpl: labelled_fraction must be in (0, 1), got {o.labelled_fraction}; e.g. 0.1 "
                "keeps the labels of 10% of the training set")
        require(o.pseudo_labels in PSEUDO_LABELS,
                f"mpl: pseudo_labels {o.pseudo_labels!r} is unknown; use one of "
                f"{sorted(PSEUDO_LABELS)}")
        self.unlabelled: Dataset | None = None

    def check(self, cfg: RunConfig) -> None:
        require(not cfg.teachers, "mpl trains its own teacher from scratch; remove the "
                                  "'teacher' section (name its network in scheme.teacher_model)")

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        self.check(cfg)
        train = data.train
        lab, unlab = split_labelled(train.targets, self.options.labelled_fraction,  # type: ignore[attr-defined]
                                    data.num_classes, self.options.split_seed)
        self.unlabelled = train.subset(unlab)  # type: ignore[attr-defined]
        return data.with_sets(train=train.subset(lab))  # type: ignore[attr-defined]

    def build_source(self, cfg: RunConfig, data: RunData, source: BatchSource) -> BatchSource:
        require(self.unlabelled is not None, "mpl: adapt_data must split the data first")
        size = self.options.labelled_batch_size or cfg.data.batch_size
        return SemiSupervisedSource(data.train, self.unlabelled, cfg.data.batch_size,
                                    min(size, len(data.train)))  # type: ignore[arg-type]

    def build_step(self, inputs: StepInputs) -> TrainStep:
        require(inputs.teacher is None, "mpl trains its own teacher; remove the 'teacher' "
                                        "section")
        if self.options.supervised_only:
            return SupervisedStep(inputs.student)
        spec = self.options.teacher_model
        name, options = ((spec.name, dict(spec.model_extra or {})) if spec is not None
                         else (inputs.cfg.student.name, dict(inputs.cfg.student.options)))
        return MetaPseudoLabelsStep(inputs.student, inputs.make_model(name, options),
                                    pseudo_labels=self.options.pseudo_labels,
                                    mpl_weight=self.options.mpl_weight,
                                    teacher_optim=self.options.teacher_optim)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        k = data.num_classes
        test = evaluate_on(trainer, step.eval_module(), data.test, num_classes=k,
                           teacher=step.eval_teacher)
        o = self.options
        variant = "supervised" if o.supervised_only else (
            "no-feedback" if o.mpl_weight == 0 else None)
        record = {"variant": variant,
                  "student": cfg.student.name, "student_options": cfg.student.options,
                  "test_accuracy": 100.0 * test["accuracy"],
                  "agreement": 100.0 * test["agreement"] if "agreement" in test else None,
                  "labelled_fraction": self.options.labelled_fraction,
                  "labelled_samples": len(data.train)}  # type: ignore[arg-type]
        if isinstance(step, MetaPseudoLabelsStep):
            teacher = evaluate_on(trainer, step.teacher, data.test, num_classes=k)
            record["teacher_accuracy"] = 100.0 * teacher["accuracy"]
            if trainer.run_dir is not None and env_from_torchrun().is_main:
                save_weights(step.teacher, trainer.run_dir / TEACHER_WEIGHTS)
        return {"records": [record]}


__all__ = ["PSEUDO_LABELS", "MetaPseudoLabels", "MetaPseudoLabelsStep", "SemiBatch",
           "SemiSupervisedSource", "SupervisedStep", "mpl_coefficient", "mpl_teacher_loss",
           "split_labelled"]
