"""The loss-term contract and the registry that lets configs name terms.

A ``LossTerm`` reads the ``Outputs`` of both sides (and the batch, for labels) and returns a
scalar. It declares which intermediate features it needs, so the ``Distiller`` taps exactly
those layers. Terms that learn (regressors, embeddings) own their parameters as ordinary
submodules; ``setup`` lets them build those from the shapes seen on the first batch, before
the optimizer is created.
"""

from __future__ import annotations

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


def build_loss(name: str, **options: Any) -> LossTerm:
    """Create the term registered as ``name``; unknown options raise ``ConfigError``."""
    return call_with_checked_kwargs("loss term", name, LOSSES.get(name), options)


__all__ = ["LOSSES", "LossTerm", "build_loss", "check_logits_match", "register_loss"]
