"""Relation knowledge: loss terms (filled in by the method-zoo issue)."""

__all__: list[str] = []
