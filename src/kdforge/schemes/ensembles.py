"""``aekd``: one student distilled from an ensemble of teachers, by a stated rule.

The teachers (``teacher:`` a list of two or more trained runs or models) may differ in
architecture and initialisation; they must predict the same classes. ``scheme.rule`` says
how their knowledge is combined (:data:`ENSEMBLE_RULES`, ``kdforge list schemes``):

- ``mean_probs``: the run's terms against the mean of the teachers' probabilities,
  ``p = 1/M sum_m softmax(z_m)`` (Hinton, Vinyals & Dean 2015, sec. 1);
- ``mean_logits``: against the mean of their logits, ``z = 1/M sum_m z_m``;
- ``weights``: against fixed weights ``ensemble_weights`` (combined as ``ensemble:`` says,
  ``mean_probs`` by default);
- ``aekd``: adaptive ensemble KD (Du, You, Li, Wu, Wang, Qian & Zhang, "Agree to Disagree:
  Adaptive Ensemble Knowledge Distillation in Gradient Space", NeurIPS 2020): every ``kd``
  term of ``losses`` is *replaced* by an ``aekd`` term of the same weight, temperature and
  schedule, ``L = sum_m alpha_m T^2 KL(p_m^T || p_s^T)`` with ``alpha`` the min-norm point
  of the teachers' logit gradients, ``sum alpha = 1``, ``0 <= alpha_m <= C``, held constant
  (:mod:`kdforge.losses.ensemble`). ``scheme.C``, ``iterations`` and ``per`` set it up.

Whatever the rule, the other terms (``ce``; response terms such as ``dkd`` read the
combined, mean-probability logits under ``aekd``) stay as they are, and feature or relation
terms are taken against one member, named ``"i:layer"`` (member index ``i``) or, with
``scheme.names``, ``"name:layer"``::

    scheme: {name: aekd, rule: aekd, names: [cnn, wide]}
    losses:
      - {name: fitnet, weight: 10, student_layer: blocks.0, teacher_layer: "wide:blocks.0"}

Fidelity (``agreement`` in the records) is measured against the equal-weight
mean-probability ensemble for every rule, so the rules' records compare. The record also
holds ``teachers`` (their number), ``ensemble_accuracy``, ``teacher_accuracy_i`` and
``teacher_weight_i``: the fixed weights of a plain rule, or AE-KD's mean weights over the
test set (solved on training-size batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kdforge.config import RunConfig, TeacherConfig
from kdforge.core.outputs import to_outputs
from kdforge.core.registry import Registry
from kdforge.core.step import TrainStep
from kdforge.core.teacher import Teacher
from kdforge.data.loaders import eval_loader, to_batch
from kdforge.distill.distiller import Distiller
from kdforge.losses.base import LossTerm
from kdforge.losses.ensemble import AEKD, check_tolerance
from kdforge.losses.response import KD
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StageResult,
    StepInputs,
    evaluate_on,
    record_of,
    register,
    require,
)
from kdforge.teachers.ensemble import EnsembleTeacher


class EnsembleOptions(SchemeOptions):
    rule: str = Field("aekd", description="how the teachers combine: mean_probs, mean_logits, "
                      "weights (ensemble_weights) or aekd (Du et al. 2020)")
    C: float = Field(0.6, gt=0.0, description="aekd's tolerance: each teacher's weight is at "
                     "most C (at least 1/teachers; 1 or more: no bound; authors' code: 0.6)")
    iterations: int = Field(10, ge=1, description="steps of aekd's weight solve")
    per: Literal["batch", "sample"] = Field("batch", description="aekd's weights once per "
                                            "mini-batch (the paper's) or per sample")
    names: list[str] | None = Field(None, description="a name per teacher, for features "
                                    "taken against one member ('name:layer')")


@dataclass
class RuleInputs:
    """What a rule builds the run's teacher and terms from."""

    members: list[Teacher]
    names: list[str] | None
    cfg: RunConfig
    terms: list[LossTerm]
    options: EnsembleOptions


@dataclass
class RuleResult:
    """The teacher the distiller runs and the terms it sums."""

    teacher: EnsembleTeacher
    terms: list[LossTerm]


#: The ensemble rules by name: ``RuleInputs -> RuleResult``.
ENSEMBLE_RULES: Registry[Callable[[RuleInputs], RuleResult]] = Registry("ensemble rule")


def _no_fixed_weights(cfg: RunConfig, rule: str) -> None:
    require(cfg.ensemble_weights is None,
            f"ensemble_weights fix the teachers' weights, which rule {rule!r} does not use: "
            "remove them, or set scheme.rule: weights")


def _no_aekd_terms(terms: list[LossTerm], rule: str) -> None:
    require(not any(isinstance(t, AEKD) for t in terms),
            f"an 'aekd' loss weighs the teachers adaptively, so it is not rule {rule!r}: "
            "use plain 'kd' (set scheme.rule: aekd to weigh them)")


def _plain_rule(combine: str) -> Callable[[RuleInputs], RuleResult]:
    def build(inputs: RuleInputs) -> RuleResult:
        _no_fixed_weights(inputs.cfg, combine)
        _no_aekd_terms(inputs.terms, combine)
        return RuleResult(EnsembleTeacher(inputs.members, combine, names=inputs.names),
                          inputs.terms)

    return build


ENSEMBLE_RULES.add("mean_probs", _plain_rule("mean_probs"),
                   source="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural "
                          "Network", summary="the mean of the teachers' probabilities")
ENSEMBLE_RULES.add("mean_logits", _plain_rule("mean_logits"),
                   source="logit averaging", summary="the mean of the teachers' logits")


@ENSEMBLE_RULES.register("weights", source="a fixed weighted ensemble",
                         summary="fixed weights from ensemble_weights")
def _weights_rule(inputs: RuleInputs) -> RuleResult:
    weights, count = inputs.cfg.ensemble_weights, len(inputs.members)
    require(weights is not None and len(weights) == count,
            f"rule 'weights' weighs the {count} teachers by ensemble_weights: give one "
            f"non-negative weight per teacher (ensemble_weights: {[1.0] * count}); got "
            f"{weights}")
    _no_aekd_terms(inputs.terms, "weights")
    return RuleResult(EnsembleTeacher(inputs.members, inputs.cfg.ensemble, weights,
                                      names=inputs.names), inputs.terms)


@ENSEMBLE_RULES.register("aekd", source="Du et al. 2020, Agree to Disagree: Adaptive Ensemble "
                                        "Knowledge Distillation in Gradient Space (NeurIPS)",
                         summary="the kd terms become aekd: weights at the min-norm point")
def _aekd_rule(inputs: RuleInputs) -> RuleResult:
    _no_fixed_weights(inputs.cfg, "aekd")
    check_tolerance(inputs.options.C, len(inputs.members), "scheme.C")
    terms = [_as_aekd(t, inputs.options) if isinstance(t, KD) else t for t in inputs.terms]
    require(any(isinstance(t, AEKD) for t in terms),
            "rule 'aekd' weighs the teachers' KD losses: give 'losses' a kd term (it becomes "
            "aekd with the same weight and T), e.g. {name: kd, weight: 0.9, T: 4}")
    return RuleResult(EnsembleTeacher(inputs.members, "mean_probs", names=inputs.names), terms)


def _as_aekd(kd: KD, options: EnsembleOptions) -> AEKD:
    require(not kd.standardize, "rule 'aekd' replaces plain kd terms; kd with standardize: "
                                "true has no AE-KD form here: remove standardize")
    schedule = kd.schedule
    return AEKD(weight=kd.weight, T=kd.T, C=options.C, iterations=options.iterations,
                per=options.per).scheduled(schedule.start_epoch, schedule.warmup_epochs,
                                           schedule.stop_epoch)


def _describe(teacher: Any, index: int, names: list[str] | None) -> str:
    where = teacher.run if isinstance(teacher, TeacherConfig) and teacher.run else getattr(
        teacher, "name", None)
    label = names[index] if names else str(index)
    return f"{label} ({where})" if where else label


@torch.no_grad()
def _classes_of(member: nn.Module, input_shape: tuple[int, ...]) -> int:
    return int(member(torch.zeros(2, *input_shape)).logits.shape[-1])


@register("aekd", paper="Du et al. 2020, Agree to Disagree: Adaptive Ensemble Knowledge "
                        "Distillation in Gradient Space (NeurIPS)")
class EnsembleDistillation(Scheme):
    """A student distilled from an ensemble of teachers by a rule (AE-KD or a plain mean)."""

    Options = EnsembleOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        ENSEMBLE_RULES.get(self.options.rule)  # an unknown rule is refused, naming the rules

    def members(self, inputs: StepInputs) -> list[Teacher]:
        """The ensemble's members, checked: two or more, predicting the run's classes."""
        cfg, teacher = inputs.cfg, inputs.teacher
        require(len(cfg.teachers) >= 2 and isinstance(teacher, EnsembleTeacher),
                f"aekd distils an ensemble: give 'teacher' a list of two or more trained "
                f"teachers (got {len(cfg.teachers)}), e.g. teacher: [{{run: runs/a}}, "
                "{run: runs/b}]")
        assert isinstance(teacher, EnsembleTeacher)
        members = list(teacher.members)
        names = self.options.names
        require(names is None or len(names) == len(members),
                f"scheme.names gives {len(names or [])} names for {len(members)} teachers: "
                "give one name per teacher, in the order of 'teacher'")
        k = inputs.data.num_classes
        counts = {_describe(t, i, names): _classes_of(m, inputs.data.input_shape)
                  for i, (t, m) in enumerate(zip(cfg.teachers, members, strict=True))}
        require(all(c == k for c in counts.values()),
                f"aekd's teachers must all predict the run's {k} classes; they predict: "
                + ", ".join(f"{name}: {c}" for name, c in counts.items())
                + ". Train every teacher on the same data and classes")
        return members

    def build_step(self, inputs: StepInputs) -> TrainStep:
        members = self.members(inputs)
        rule = ENSEMBLE_RULES.get(self.options.rule)
        built = rule(RuleInputs(members, self.options.names, inputs.cfg, inputs.terms,
                                self.options))
        reference = EnsembleTeacher(members, "mean_probs", names=self.options.names)
        return Distiller(inputs.student, built.teacher, built.terms, eval_teacher=reference)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        assert isinstance(step, Distiller) and isinstance(step.teacher, EnsembleTeacher)
        k, members = data.num_classes, list(step.teacher.members)
        record: dict[str, Any] = {"teachers": len(members)}
        ensemble = evaluate_on(trainer, step.eval_teacher, data.test, num_classes=k)
        record["ensemble_accuracy"] = 100.0 * ensemble["accuracy"]
        for i, member in enumerate(members):
            test = evaluate_on(trainer, member, data.test, num_classes=k)
            record[f"teacher_accuracy_{i}"] = 100.0 * test["accuracy"]
        for i, w in enumerate(self.teacher_weights(step, trainer, data, cfg.data.batch_size)):
            record[f"teacher_weight_{i}"] = w
        return {"record": record}

    @staticmethod
    @torch.no_grad()
    def teacher_weights(step: Distiller, trainer: Any, data: RunData,
                        batch_size: int) -> list[float]:
        """The fixed weights of the ensemble, or AE-KD's mean weights over the test set."""
        assert isinstance(step.teacher, EnsembleTeacher)
        term = next((t for t in step.terms if isinstance(t, AEKD)), None)
        if term is None:
            return [float(w) for w in step.teacher.weights]
        student, device = step.eval_module(), trainer.device
        was_training = student.training
        student.eval()
        total, count = torch.zeros(len(step.teacher.members), device=device), 0
        try:
            for raw in eval_loader(data.test, batch_size):
                batch = to_batch(raw)
                x = batch.inputs.to(device)
                tx = x if batch.teacher_inputs is None else batch.teacher_inputs.to(device)
                members = step.teacher(tx, batch).member_logits
                alpha = term.weights(to_outputs(student(x)).logits, members)
                total += alpha.expand(x.shape[0], -1).sum(0)
                count += x.shape[0]
        finally:
            student.train(was_training)
        return (total / max(count, 1)).tolist()

    def records(self, cfg: RunConfig, result: StageResult) -> list[dict[str, Any]]:
        extra = result.summary.get("scheme", {}).get("record", {})
        return [record_of(result, cfg.student.name, cfg.student.options,
                          variant=self.options.rule, **extra)]


__all__ = ["ENSEMBLE_RULES", "EnsembleDistillation", "EnsembleOptions", "RuleInputs",
           "RuleResult"]
