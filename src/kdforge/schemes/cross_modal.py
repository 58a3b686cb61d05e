"""``cross_modal``: a teacher trained on one modality supervises a student on another.

Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision Transfer", CVPR 2016.
Given paired samples ``(x_i, m(x_i))`` of a labelled source modality (the clean sample
``x``, on which the teacher ``phi`` was trained) and an unlabelled target modality
``m(x)`` (here a registered transform of ``x``: :mod:`kdforge.data.modalities`), the
student ``psi`` on the target modality is trained to reproduce the teacher's
representation of the paired source sample (their Eq. 1):

    min_{W_psi}  sum_i  f( t(phi^(l*)(x_i)), psi^(l)(m(x_i)) )

where ``phi^(l*)``, ``psi^(l)`` are a teacher and a student layer, ``t`` a transformation
and ``f`` a loss (the paper: L2 distance of mid-level features, ``pool5``). Here ``f`` is the
run's ``losses``: ``fitnet`` is the paper's L2 between a student layer (regressed, the
transformation) and a teacher layer; ``kd`` matches the output layer (Hinton et al.'s
``T^2 KL(softmax(phi(x_i)/T) || softmax(psi(m(x_i))/T))``). The teacher only ever sees
``x_i`` and the student only ``m(x_i)``; every step's pairs are per sample.

Options (``scheme:`` keys besides ``name``):

- ``modality``: the student's modality: a registered transform name (``blur``), one step
  with its options (``{name: blur, sigma: 2}``), or a list of steps applied in order
  (``[{name: blur, sigma: 2}, {name: downsample, factor: 4}]``);
- ``labels`` (default true): false is the paper's setting, the student learns from the
  unlabelled pairs alone (the training samples carry no targets; a term that reads only
  labels, ``ce``, is refused); true adds the labels of the target modality (``ce`` in
  ``losses``, e.g. ``0.1 ce + 0.9 kd``). Validation and test keep their labels (they
  measure accuracy);
- ``seed`` (default 0): seeds the random parts of the modality (with each sample's key).

The teacher must be a run directory (``teacher: {run: DIR}``) trained on the clean data;
fidelity (``agreement``) compares the student on ``m(x)`` with the teacher on the paired
``x``. Without a teacher and with ``losses: [ce]`` the run is the student-alone baseline
on its modality (variant ``MODALITY-alone``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field

from kdforge.config import RunConfig, StoreTeacherConfig
from kdforge.core.step import TrainStep
from kdforge.data.modalities import MODALITIES, ModalityChain, PairedModality, build_modality
from kdforge.losses.base import LOSSES
from kdforge.models.runs import read_model_description
from kdforge.schemes.base import (
    RunData,
    Scheme,
    SchemeOptions,
    StageResult,
    record_of,
    register,
    require,
)

#: The key streams of the splits (:class:`PairedModality`): a sample's representation
#: depends on its split and position in it alone.
TRAIN, VAL, TEST, ALL_TRAIN = 0, 1, 2, 3


class ModalityStep(SchemeOptions):
    """One transform: ``{name: blur, sigma: 2}`` (its options beside ``name``)."""

    model_config = SchemeOptions.model_config | {"extra": "allow"}
    name: str


class CrossModalOptions(SchemeOptions):
    modality: str | ModalityStep | list[ModalityStep] = Field(
        description="the student's modality: a transform name, {name: ..., options}, or a "
                    "list of them applied in order (kdforge.data.modalities)")
    labels: bool = Field(True, description="false: learn from the unlabelled pairs alone")
    seed: int = Field(0, description="seeds the modality's random parts")

    @property
    def steps(self) -> list[dict[str, Any]]:
        raw = self.modality
        specs = [raw] if not isinstance(raw, list) else raw
        return [{"name": s} if isinstance(s, str) else {"name": s.name, **(s.model_extra or {})}
                for s in specs]


@register("cross_modal", paper="Gupta, Hoffman & Malik 2016, Cross Modal Distillation for "
                               "Supervision Transfer (CVPR)")
class CrossModal(Scheme):
    """A teacher on the clean modality teaches a student on a transformed modality."""

    Options = CrossModalOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        steps = self.options.steps
        require(bool(steps), "cross_modal needs a modality: e.g. modality: {name: blur, sigma: "
                             f"2}} (one of {', '.join(MODALITIES.names())})")
        for step in steps:
            MODALITIES.get(step["name"])  # an unknown name, with the closest ones
        self.modality: ModalityChain | None = None

    # -- checks ---------------------------------------------------------------------------------
    def check_run(self, cfg: RunConfig, clean_shape: tuple[int, ...]) -> None:
        """Refuse a config this scheme cannot run (``clean_shape``: the data's samples),
        before anything is trained or written."""
        require(cfg.view is None, "cross_modal gives the teacher the clean sample and the "
                                  "student its modality; remove the 'view' section")
        for teacher in cfg.teachers:
            require(not isinstance(teacher, StoreTeacherConfig),
                    "cross_modal's teacher labels the paired clean samples as it trains; give "
                    "a trained run (teacher: {run: DIR}), not a soft-label store")
            require(teacher.run is not None,
                    f"cross_modal's teacher must be a run directory (teacher: {{run: DIR}}), "
                    f"which records the clean input shape; got a {teacher.name!r} model")
            shape = tuple(read_model_description(teacher.run)["input_shape"])
            require(shape == clean_shape,
                    f"teacher run {teacher.run!r} takes inputs of shape {shape}, but the clean "
                    f"samples of {cfg.data.name!r} have shape {clean_shape}; cross_modal's "
                    "teacher must be trained on the clean data (the student gets the modality)")
        label_only = [loss.name for loss in cfg.losses if not LOSSES.get(loss.name).needs_teacher]
        if not self.options.labels:
            require(not label_only,
                    f"cross_modal with labels: false learns from unlabelled pairs, but the "
                    f"losses {label_only} read only the labels; remove them (e.g. losses: "
                    "[{name: kd, T: 4}]) or set labels: true")
            require(bool(cfg.teachers), "cross_modal with labels: false learns from the "
                                        "teacher alone; give teacher: {run: DIR}")
        teacher_terms = [loss.name for loss in cfg.losses if LOSSES.get(loss.name).needs_teacher]
        require(bool(cfg.teachers) or not teacher_terms,
                f"cross_modal distils a teacher trained on the clean modality, but there is no "
                f"'teacher' section and the losses {teacher_terms} need one; give teacher: "
                "{run: DIR} (for the student-alone baseline: no teacher and losses: [{name: ce}])")
        require(bool(cfg.teachers) or bool(label_only),
                "cross_modal without a teacher trains the student alone; give it "
                "losses: [{name: ce}] or a teacher: {run: DIR}")

    # -- the hooks ------------------------------------------------------------------------------
    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        """Every split paired: ``input`` = the modality of the sample, ``teacher_input`` =
        the clean sample; the student is built for the modality's shape."""
        self.check_run(cfg, data.input_shape)
        modality = build_modality(self.options.steps, data.input_shape, self.options.seed)
        self.modality = modality
        labels = self.options.labels

        def pair(ds: Any, stream: int, with_labels: bool = True) -> PairedModality:
            return PairedModality(ds, modality, stream=stream, labels=with_labels)

        test = pair(data.test, TEST)
        splits = replace(data.splits, train=pair(data.splits.train, ALL_TRAIN, labels),
                         test=test, input_shape=modality.output_shape)
        return data.with_sets(splits=splits, train=pair(data.train, TRAIN, labels),
                              val=pair(data.val, VAL) if data.val is not None else None,
                              test=test)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        modality = self.modality
        if modality is None:
            return {}
        return {"modality": modality.describe(), "labels": self.options.labels,
                "clean_shape": list(modality.input_shape),
                "student_shape": list(modality.output_shape)}

    def variant(self, cfg: RunConfig) -> str:
        """``blur+downsample``, with ``-unlabelled`` (no labels) or ``-alone`` (no teacher)."""
        name = "+".join(step["name"] for step in self.options.steps)
        if not cfg.teachers:
            return f"{name}-alone"
        return name if self.options.labels else f"{name}-unlabelled"

    def records(self, cfg: RunConfig, result: StageResult) -> list[dict[str, Any]]:
        return [record_of(result, cfg.student.name, cfg.student.options,
                          variant=self.variant(cfg), labels=self.options.labels,
                          teacher=bool(cfg.teachers))]


__all__ = ["CrossModal", "CrossModalOptions", "ModalityStep"]
