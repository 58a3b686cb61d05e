"""The loss-term contract and the registry that lets configs name terms.

A ``LossTerm`` reads the ``Outputs`` of both sides (and the batch, for labels) and returns a
scalar. It declares which intermediate features it needs, so the ``Distiller`` taps exactly
those layers. Terms that learn (regressors, embeddings) own their parameters as ordinary
submodules; ``setup`` lets them build those from the shapes seen on the first batch, before
the optimizer is created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.core.registry import Registry, call_with_checked_kwargs

LOSSES: Registry[type[LossTerm]] = Registry("loss term")


def register_loss(name: str, *, source: str):
    """Class decorator: register a ``LossTerm`` subclass under ``name`` (its config name)."""

    def decorate(cls: type[LossTerm]) -> type[LossTerm]:
        cls.name = name
        LOSSES.add(name, cls, source=source)
        return cls

    return decorate


@dataclass(frozen=True)
class WeightSchedule:
    """How a term's weight evolves with training progress (in epochs, fractional).

    The factor is 0 before ``start_epoch``, then rises linearly from 0 to 1 over
    ``warmup_epochs`` (DKD's warm-up: Zhao et al. 2022 ramp the DKD loss over the first 20
    epochs), then stays 1 until ``stop_epoch`` (if given), after which it is 0 again. The
    last expresses the initialisation stages of activation-boundary and FSP distillation:
    the feature term alone first, then the labels (``ce`` with ``start_epoch``). The default
    schedule is the constant 1.
    """

    start_epoch: float = 0.0
    warmup_epochs: float = 0.0
    stop_epoch: float | None = None

    def __post_init__(self) -> None:
        if self.start_epoch < 0 or self.warmup_epochs < 0:
            raise ConfigError(
                f"start_epoch and warmup_epochs must be >= 0, got {self.start_epoch}, "
                f"{self.warmup_epochs}"
            )
        if self.stop_epoch is not None and self.stop_epoch <= self.start_epoch:
            raise ConfigError(
                f"stop_epoch ({self.stop_epoch}) must come after start_epoch ({self.start_epoch})"
            )

    def factor(self, epoch: float) -> float:
        if epoch < self.start_epoch:
            return 0.0
        if self.stop_epoch is not None and epoch >= self.stop_epoch:
            return 0.0
        if self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (epoch - self.start_epoch) / self.warmup_epochs)


class LossTerm(nn.Module):
    """One term of the distillation objective.

    Subclasses implement :meth:`forward` and, where they use intermediate features, return
    the layer names from :meth:`student_features` / :meth:`teacher_features`.

    Args:
        weight: the term's coefficient in the weighted sum the ``Distiller`` computes.
    """

    name: ClassVar[str] = "term"
    #: False for terms computed from the student and the labels alone (cross-entropy).
    needs_teacher: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"{self.name}: weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.schedule = WeightSchedule()

    def scheduled(self, start_epoch: float = 0.0, warmup_epochs: float = 0.0,
                  stop_epoch: float | None = None) -> LossTerm:
        """Give the term a weight schedule (see :class:`WeightSchedule`); returns ``self``.

        >>> term = KD(T=4, weight=0.9).scheduled(warmup_epochs=20)   # doctest: +SKIP
        """
        self.schedule = WeightSchedule(start_epoch, warmup_epochs, stop_epoch)
        return self

    def weight_at(self, epoch: float) -> float:
        """The effective weight after ``epoch`` (fractional) epochs of training."""
        return self.weight * self.schedule.factor(epoch)

    def student_features(self) -> list[str]:
        """Module names of the student whose outputs this term reads."""
        return []

    def teacher_features(self) -> list[str]:
        """Module names of the teacher whose outputs this term reads."""
        return []

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        """Check shapes (and build learnable adapters) from a first batch, before training.

        Raise :class:`ShapeMismatchError` naming both shapes when the term cannot take them.
        """

    def bind_dataset_size(self, num_samples: int) -> None:
        """Told the training set's size before :meth:`setup` (memory banks need it)."""

    #: True for terms whose own parameters must be fitted on the teacher before the student
    #: trains (factor transfer's paraphraser); the trainer then calls :meth:`pretrain`.
    needs_pretraining: ClassVar[bool] = False

    def pretrain(self, teacher_outputs: Callable[[], Iterable[Outputs]]) -> None:
        """Fit the term's own parameters on the teacher, before the student's training.

        ``teacher_outputs()`` returns a fresh pass over the training set: the teacher's
        ``Outputs`` (with this term's teacher features) batch by batch, on the training
        device. Called once, after :meth:`setup`, and not again when a run resumes.
        """

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


def check_logits_match(term: str, student: Outputs, teacher: Outputs | None) -> None:
    """Raise ``ShapeMismatchError`` unless both sides have logits of the same shape."""
    if teacher is None:
        raise ConfigError(f"the {term!r} loss needs a teacher; give one or remove the term")
    s, t = tuple(student.logits.shape), tuple(teacher.logits.shape)
    if s != t:
        detail = ""
        if len(s) == 2 and len(t) == 2 and s[1] != t[1]:
            detail = (
                f": the student predicts {s[1]} classes and the teacher {t[1]}; "
                f"build the student with num_classes={t[1]}"
            )
        raise ShapeMismatchError(
            f"{term}: student logits {s} and teacher logits {t} differ{detail}"
        )


LAYER_HELP = ("module paths as in model.named_modules(); `kdforge list layers MODEL` "
               "prints them")


def layer_pairs(term: str, student_layer: str | None = None, teacher_layer: str | None = None,
                student_layers: Sequence[str] | str | None = None,
                teacher_layers: Sequence[str] | str | None = None,
                *, lists: str = "either") -> tuple[list[str], list[str]]:
    """Resolve the layer options of a term into two equally long lists of names.

    ``lists`` is ``"no"`` (one layer per side), ``"yes"`` (lists only) or ``"either"``.
    """
    single = student_layer is not None or teacher_layer is not None
    multi = student_layers is not None or teacher_layers is not None
    if single and multi:
        raise ConfigError(
            f"{term}: give either student_layer/teacher_layer or student_layers/teacher_layers, "
            "not both"
        )
    if lists == "yes" or (lists == "either" and multi):
        if student_layers is None or teacher_layers is None:
            raise ConfigError(
                f"{term}: name the layers it compares: student_layers=[...] and "
                f"teacher_layers=[...] ({LAYER_HELP})"
            )
        s = [student_layers] if isinstance(student_layers, str) else list(student_layers)
        t = [teacher_layers] if isinstance(teacher_layers, str) else list(teacher_layers)
        for names, which in ((s, "student_layers"), (t, "teacher_layers")):
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"{term}: {which} must be a non-empty list of layer names")
        if len(s) != len(t):
            raise ConfigError(
                f"{term}: student_layers has {len(s)} names and teacher_layers {len(t)}; "
                f"they are compared pairwise, so give as many on each side ({s} vs {t})"
            )
        return s, t
    if student_layer is None or teacher_layer is None:
        hint = " (or student_layers/teacher_layers lists)" if lists == "either" else ""
        raise ConfigError(
            f"{term}: name the layers it compares: student_layer='...' and "
            f"teacher_layer='...'{hint} ({LAYER_HELP})"
        )
    for name, which in ((student_layer, "student_layer"), (teacher_layer, "teacher_layer")):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{term}: {which} must be a layer name, got {name!r}")
    return [student_layer], [teacher_layer]


def sum_terms(values: Iterable[Tensor]) -> Tensor:
    """The sum of per-layer-pair values (terms that compare several pairs add them up)."""
    values = list(values)
    if not values:
        raise ConfigError("a loss term compared no layer pairs; name at least one layer")
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def layers_repr(student_layers: Sequence[str], teacher_layers: Sequence[str]) -> str:
    """``student_layers=[...], teacher_layers=[...]`` for ``extra_repr``."""
    return f"student_layers={list(student_layers)}, teacher_layers={list(teacher_layers)}"


def read_features(term: str, student: Outputs, teacher: Outputs | None,
                  student_names: Sequence[str], teacher_names: Sequence[str]
                  ) -> tuple[list[Tensor], list[Tensor]]:
    """The named features of both sides; a clear error when the run has no teacher."""
    if teacher is None:
        raise ConfigError(f"the {term!r} loss needs a teacher; give one or remove the term")
    return ([student.feature(n, "student") for n in student_names],
            [teacher.feature(n, "teacher") for n in teacher_names])


class LayerPairTerm(LossTerm):
    """A term on pairs of features: student layer ``student_layers[i]`` with teacher layer
    ``teacher_layers[i]`` (module paths; set them in ``__init__``, e.g. from
    :func:`layer_pairs`)."""

    student_layers: list[str]
    teacher_layers: list[str]

    def student_features(self) -> list[str]:
        return list(self.student_layers)

    def teacher_features(self) -> list[str]:
        return list(self.teacher_layers)

    def layer_features(self, student: Outputs, teacher: Outputs | None
                       ) -> tuple[list[Tensor], list[Tensor]]:
        """The student's and the teacher's features of the layer pairs, in order."""
        return read_features(self.name, student, teacher, self.student_layers,
                             self.teacher_layers)


def build_loss(name: str, *, start_epoch: float = 0.0, warmup_epochs: float = 0.0,
               stop_epoch: float | None = None, **options: Any) -> LossTerm:
    """Create the term registered as ``name`` (with a weight schedule); unknown options raise
    ``ConfigError`` naming the allowed ones."""
    term = call_with_checked_kwargs("loss term", name, LOSSES.get(name), options)
    return term.scheduled(start_epoch, warmup_epochs, stop_epoch)


__all__ = ["LAYER_HELP", "LOSSES", "LayerPairTerm", "LossTerm", "WeightSchedule", "build_loss",
           "check_logits_match", "layer_pairs", "layers_repr", "read_features", "register_loss",
           "sum_terms"]
