"""The Distiller: a student forward pass, a teacher signal, a weighted sum of loss terms.

It is the plain :class:`~kdforge.core.step.TrainStep`: one trained module (the student),
one optimizer group (the student's parameters and the terms' learnable parts).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs, StepResult, to_outputs
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.core.taps import FeatureTap
from kdforge.core.teacher import Teacher
from kdforge.losses.base import LossTerm
from kdforge.losses.response import CE
from kdforge.teachers.module import ModuleTeacher


class Distiller(TrainStep):
    """Student + teacher + loss terms; ``forward`` computes one step's loss.

    >>> distiller = Distiller(student, teacher, [CE(weight=0.1), KD(T=4, weight=0.9)])
    >>> out = distiller(x, y)            # doctest: +SKIP
    >>> out.loss.backward()              # out.parts == {"ce": ..., "kd": ...}

    Args:
        student: the network being trained (any ``nn.Module`` returning logits).
        teacher: a :class:`Teacher`, a plain trained ``nn.Module`` (wrapped in a frozen
            :class:`ModuleTeacher`), or ``None`` to train without a teacher (the same path
            trains teachers and baselines).
        terms: the loss terms; default ``[CE()]``.
        eval_teacher: the teacher fidelity is measured against (default: ``teacher``,
            unless it cannot label held-out data, as a soft-label store cannot).

    The teacher stays frozen, in eval mode and without gradients whatever ``.train()`` is
    called on the distiller. ``parts`` holds each term's *weighted* contribution, so the
    parts sum to ``loss``; the same dict is what the trainer logs.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 terms: Sequence[LossTerm] | None = None, *,
                 eval_teacher: nn.Module | None | str = "auto") -> None:
        super().__init__()
        terms = list(terms) if terms is not None else [CE()]
        if not terms:
            raise ConfigError("a distiller needs at least one loss term, e.g. [CE()]")
        for term in terms:
            if not isinstance(term, LossTerm):
                raise ConfigError(f"loss terms must be LossTerm objects, got {type(term).__name__}")
        if teacher is not None and not isinstance(teacher, Teacher):
            teacher = ModuleTeacher(teacher)
        needy = [t.name for t in terms if t.needs_teacher]
        if teacher is None and needy:
            raise ConfigError(
                f"loss terms {needy} need a teacher but none was given; pass a teacher or "
                "use only terms such as 'ce'"
            )
        self.student = student
        self.teacher = teacher
        self.terms = nn.ModuleList(terms)
        self.part_names = _unique_names([t.name for t in terms])
        self._tap = FeatureTap(student, _union(t.student_features() for t in terms),
                               role="student")
        if teacher is not None:
            teacher.require_features(_union(t.teacher_features() for t in terms))
        self.prepared = False
        #: Training progress in epochs (fractional); term weight schedules read it. The
        #: trainer sets it every step; in your own loop set ``distiller.progress = epoch``.
        self.progress = 0.0
        if eval_teacher == "auto":
            eval_teacher = teacher if getattr(teacher, "labels_any_input", True) else None
        self._eval_teacher = [eval_teacher]  # a list: not registered as a submodule

    # -- the TrainStep contract -----------------------------------------------------------
    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def state_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "terms": self.terms}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("student", list(self.trainable_parameters()))]

    @property
    def eval_teacher(self) -> nn.Module | None:
        return self._eval_teacher[0]

    def synced_buffers(self) -> list[str]:
        return [f"terms.{i}.{name}" for i, term in enumerate(self.terms)
                for name in getattr(term, "synced_buffers", ())]

    # -- modes and parameters -------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        return super().train(mode)  # a frozen Teacher stays in eval mode whatever it is told

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters and the learnable parts of the terms (for the optimizer)."""
        for p in self.student.parameters():
            if p.requires_grad:
                yield p
        for p in self.terms.parameters():
            if p.requires_grad:
                yield p

    # -- the step -----------------------------------------------------------------------------
    def teach(self, batch: Batch) -> Outputs | None:
        """The teacher's outputs for the batch (``None`` without a teacher)."""
        if self.teacher is None:
            return None
        inputs = batch.teacher_inputs if batch.teacher_inputs is not None else batch.inputs
        # a frozen teacher runs without a graph; one whose input receives gradients keeps it
        keep_graph = self.teacher.gradients == "input" and torch.is_grad_enabled()
        with torch.set_grad_enabled(keep_graph):
            return self.teacher(inputs, batch)

    def student_outputs(self, inputs: Tensor) -> Outputs:
        raw = self.student(inputs)
        return to_outputs(raw, self._tap.pop() if self._tap.names else None)

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        """One step's loss for a :class:`Batch` (the one phase is ``"student"``)."""
        if not self.prepared:
            before = sum(1 for _ in self.terms.parameters())
            self.prepare(batch)
            if sum(1 for _ in self.terms.parameters()) > before:
                warnings.warn(
                    "loss terms built learnable adapters on this first batch, after your "
                    "optimizer was created, so the optimizer does not train them; call "
                    "distiller.prepare(batch) before building the optimizer",
                    stacklevel=2,
                )
        teacher_out = self.teach(batch)
        student_out = self.student_outputs(batch.inputs)
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, term in zip(self.part_names, self.terms, strict=True):
            # Always computed, even at weight 0, so every parameter takes part in each step
            # (DistributedDataParallel expects that).
            value = term(student_out, teacher_out, batch) * term.weight_at(self.progress)
            parts[name] = value
            total = value if total is None else total + value
        assert total is not None
        return StepResult(total, parts, student_out, teacher_out)

    def forward(self, inputs: Tensor | Batch, targets: Tensor | None = None, *,
                teacher_inputs: Tensor | None = None, index: Tensor | None = None,
                view: Any = None, phase: str | None = None) -> StepResult:
        """``distiller(x, y)`` in your own loop; the trainer passes a whole :class:`Batch`."""
        if isinstance(inputs, Batch):
            return self.step(inputs, phase)
        return self.step(Batch(inputs, targets, teacher_inputs, index, view))

    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        """Validate every term on a first batch and build their learnable adapters.

        Runs once before training (the trainer calls it before creating the optimizer, so
        adapters built here are optimised). A class-count mismatch or a feature shape a term
        cannot take raises ``ShapeMismatchError`` here, naming both shapes. With the
        trainer's ``context``, terms also learn the data set's size (memory banks) and
        those that pretrain (a paraphraser) do so on the ordered training batches.
        """
        if context is not None and context.num_samples is not None:
            for term in self.terms:
                term.bind_dataset_size(context.num_samples)
        if not self.prepared:
            self._look_ahead(batch)
        if context is not None and context.pretrain and any(
                t.needs_pretraining for t in self.terms):
            if context.ordered_batches is None:
                raise ConfigError("a loss term pretrains on the training data, but this batch "
                                  "source has no fixed pass over it (a generator)")
            self.pretrain_terms(context.ordered_batches)

    @torch.no_grad()
    def _look_ahead(self, batch: Batch) -> None:
        was_training = self.training
        self.eval()  # no BatchNorm statistics are updated by this look-ahead pass
        try:
            teacher_out = self.teach(batch)
            student_out = self.student_outputs(batch.inputs)
        finally:
            self.train(was_training)
        for term in self.terms:
            term.setup(student_out, teacher_out, batch)
        self.prepared = True


    def pretrain_terms(self, batches: Callable[[], Iterable[Batch]]) -> None:
        """Run :meth:`LossTerm.pretrain` of the terms that need it, on the teacher's outputs.

        ``batches()`` returns a fresh pass over the training data (on the right device).
        """
        for term in self.terms:
            if term.needs_pretraining:
                if self.teacher is None:
                    raise ConfigError(f"the {term.name!r} loss pretrains on a teacher; give one")
                term.pretrain(lambda: (self.teach(b) for b in batches()))


def _union(groups: Iterable[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        for name in group:
            seen[name] = None
    return list(seen)


def _unique_names(names: list[str]) -> list[str]:
    """``["kd", "at", "at"]`` -> ``["kd", "at", "at_1"]``."""
    out: list[str] = []
    for name in names:
        candidate, i = name, 1
        while candidate in out:
            candidate = f"{name}_{i}"
            i += 1
        out.append(candidate)
    return out
