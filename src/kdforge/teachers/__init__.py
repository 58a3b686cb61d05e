"""Teachers: a frozen module (optionally passing gradients to its input), an ensemble, a peer
that trains while it teaches, a soft-label store (the teacher run once)."""

from kdforge.store import SoftLabelStore, SoftLabelStoreWriter, StoreLayout, StoreView
from kdforge.teachers.base import Teacher
from kdforge.teachers.ensemble import COMBINE_RULES, EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from kdforge.teachers.peer import PeerTeacher
from kdforge.teachers.stored import StoredTeacher, StoreRun, open_store_run

__all__ = ["COMBINE_RULES", "EnsembleTeacher", "ModuleTeacher", "PeerTeacher", "SoftLabelStore",
           "SoftLabelStoreWriter", "StoreLayout", "StoreRun", "StoreView", "StoredTeacher",
           "Teacher", "open_store_run"]
