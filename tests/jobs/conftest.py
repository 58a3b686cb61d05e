"""Fixtures of the job tests (a trained teacher, the inputs a teacher labelled)."""

from tests.store.fixtures import labelled, teacher  # noqa: F401
