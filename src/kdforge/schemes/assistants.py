"""``takd``: teacher-assistant knowledge distillation, teacher -> assistant(s) -> student.

Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved Knowledge
Distillation via Teacher Assistant", AAAI 2020. When the teacher is much larger than the
student, distilling through intermediate-size assistants closes the gap better than one
jump: the teacher teaches assistant 1, assistant ``i`` teaches assistant ``i + 1``, the
last assistant teaches the student, each stage with the same loss (the run's ``losses``;
the paper uses Hinton KD). One command runs the chain; every stage's run directory is kept
(``NAME/assistant-1``, ..., ``NAME/student``) and an interrupted chain resumes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kdforge.config import RunConfig, TeacherConfig
from kdforge.schemes.base import (
    Runner,
    Scheme,
    SchemeOptions,
    derive,
    evaluate_runs,
    record_of,
    register,
    require,
)
from kdforge.schemes.mutual import PeerSpec


class AssistantOptions(SchemeOptions):
    assistants: list[PeerSpec] = Field(description="the assistants, largest first: "
                                       "[{name: cnn1d, channels: [32, 64]}, ...]")


def teacher_run(cfg: RunConfig, scheme: str) -> str:
    """The run directory of ``cfg``'s one model teacher (sequence schemes chain runs)."""
    require(isinstance(cfg.teacher, TeacherConfig) and cfg.teacher.run is not None,
            f"{scheme} starts from one trained teacher: give 'teacher: {{run: DIR}}' (a run "
            "directory from kdforge train)")
    assert isinstance(cfg.teacher, TeacherConfig) and cfg.teacher.run is not None
    return cfg.teacher.run


def model_section(spec: PeerSpec) -> dict[str, Any]:
    return {"name": spec.name, **(spec.model_extra or {})}


@register("takd", paper="Mirzadeh et al. 2020, Improved Knowledge Distillation via Teacher "
                        "Assistant (AAAI)")
class TeacherAssistant(Scheme):
    """Teacher -> assistant(s) -> student, each stage distilled from the one before."""

    Options = AssistantOptions
    sequence = True

    def check(self, cfg: RunConfig) -> None:
        require(len(self.options.assistants) >= 1,
                "takd needs at least one assistant under scheme.assistants (a chain with no "
                "assistant is plain KD)")
        teacher_run(cfg, "takd")

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        self.check(cfg)
        teacher = teacher_run(cfg, "takd")
        original = TeacherConfig(run=teacher)
        records, previous = [], teacher
        data = runner.data(cfg)
        stages = [(f"assistant-{i + 1}", model_section(a))
                  for i, a in enumerate(self.options.assistants)]
        stages.append(("student", cfg.student.model_dump(mode="json", exclude_none=True)))
        for name, student in stages:
            stage = derive(cfg, name, student=student,
                           teacher={"run": previous, "precision": cfg.teacher.precision})
            result = runner.stage(stage)
            fidelity = evaluate_runs([result.run_dir], data.test, num_classes=data.num_classes,
                                     device=cfg.train.device,
                                     teacher=_load(original))
            record = record_of(result, stage.student.name, stage.student.options,
                               variant=None if name == "student" else name)
            record["agreement"] = 100.0 * fidelity["agreement"]  # with the original teacher
            records.append(record)
            previous = str(result.run_dir)
        return [records[-1], *records[:-1]]


def _load(teacher: TeacherConfig):
    from kdforge.models.runs import load_run_model
    from kdforge.teachers.module import ModuleTeacher

    assert teacher.run is not None
    return ModuleTeacher(load_run_model(teacher.run))


__all__ = ["TeacherAssistant", "model_section", "teacher_run"]
