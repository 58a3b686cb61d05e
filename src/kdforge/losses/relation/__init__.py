"""Relation knowledge: terms on the relations among samples (or among channels) of a layer.

Each term compares a structure computed *within* one side (a batch similarity matrix, the
distances and angles among samples, a channel correlation matrix) with the same structure of
the other side, so most of them need no adapter between different widths. Features of any
rank are flattened per sample (:func:`~kdforge.losses.adapters.as_embedding`) unless the
paper works on feature maps (FSP, ICKD).
"""

# Imported in this order so the terms register in the order they always had.
# isort: off
from kdforge.losses.relation.sp import SP
from kdforge.losses.relation.rkd import RKD
from kdforge.losses.relation.pkt import PKT
from kdforge.losses.relation.cc import CC
from kdforge.losses.relation.fsp import FSP, fsp_matrix
from kdforge.losses.relation.ickd import ICKD
# isort: on

__all__ = ["CC", "FSP", "ICKD", "PKT", "RKD", "SP", "fsp_matrix"]
