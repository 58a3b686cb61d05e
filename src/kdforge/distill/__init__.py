"""The Distiller: student + teacher + loss terms -> StepResult."""

from kdforge.distill.distiller import Distiller

__all__ = ["Distiller"]
