"""Teachers: a frozen module, an ensemble (later: a soft-label store, a peer)."""

from kdforge.teachers.base import Teacher
from kdforge.teachers.ensemble import COMBINE_RULES, EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher

__all__ = ["COMBINE_RULES", "EnsembleTeacher", "ModuleTeacher", "Teacher"]
