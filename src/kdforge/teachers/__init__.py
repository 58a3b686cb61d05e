"""Teachers: a frozen module, an ensemble, a soft-label store (the teacher run once)."""

from kdforge.teachers.base import Teacher
from kdforge.teachers.ensemble import COMBINE_RULES, EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from kdforge.teachers.store import SoftLabelStore, SoftLabelStoreWriter, StoreLayout
from kdforge.teachers.stored import StoredTeacher, StoreView

__all__ = ["COMBINE_RULES", "EnsembleTeacher", "ModuleTeacher", "SoftLabelStore",
           "SoftLabelStoreWriter", "StoreLayout", "StoreView", "StoredTeacher", "Teacher"]
