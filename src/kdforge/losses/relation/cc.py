"""Correlation congruence: the batch's kernel correlation matrices (Peng et al. 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import Regressor, as_embedding, describe
from kdforge.losses.base import layer_pairs, register_loss
from kdforge.losses.relation.shared import _float32, _LayerPairTerm


@register_loss("cc", source='Peng et al. 2019, "Correlation Congruence for Knowledge Distillation" '
                            '(ICCV)')
class CC(_LayerPairTerm):
    """Correlation congruence: match the batch's kernel correlation matrices.

    Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang 2019, "Correlation Congruence for Knowledge
    Distillation" (ICCV). Embeddings (features flattened to ``(B, D)``) are L2-normalised
    and the correlation ``C_ij = k(e_i, e_j)`` uses the Gaussian RBF kernel
    ``exp(-gamma ||e_i - e_j||^2) = exp(-2 gamma) exp(2 gamma e_i . e_j)`` approximated by
    its Taylor series of order ``P`` (the paper's generalised kernel):

    ``C_ij = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! * (e_i . e_j)^p``,
    ``L = 1/B^2 * ||C_s - C_t||_F^2``.

    Defaults ``P = 2``, ``gamma = 0.4`` (the paper's). This is the paper's formulation; the
    CRD repository's ``Correlation`` loss computes another quantity (the products of
    consecutive samples' embedding differences ``|e_s - e_t|``, on learned 128-d embeddings
    of both sides). Its CIFAR-100 weight 0.02 is kept as the default for that benchmark's
    recipe, but it was tuned for that quantity, not this one: expect to raise it.

    The paper distils embeddings of equal size; when the widths differ, a linear layer
    (with bias, no BatchNorm) maps the student's embedding to the teacher's width before
    the normalisation. It is built in :meth:`setup` (so the optimizer trains it); equal
    widths need none.
    """

    def __init__(self, weight: float = 0.02, student_layer: str | None = None,
                 teacher_layer: str | None = None, gamma: float = 0.4, P: int = 2) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("cc", student_layer, teacher_layer, None, None,
                                          lists="no"))
        if not gamma > 0:
            raise ConfigError(f"cc: gamma must be > 0, got {gamma}")
        if isinstance(P, bool) or not isinstance(P, int) or P < 0:
            raise ConfigError(f"cc: P (the Taylor order) must be an integer >= 0, got {P!r}")
        self.gamma, self.P = float(gamma), P
        self.adapter: Regressor | None = None

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        pairs = self._feature_pairs(student, teacher)
        self._check_batch(pairs)
        ((fs, ft),) = pairs
        es, et = as_embedding(fs), as_embedding(ft)
        if es.shape[1] != et.shape[1] and self.adapter is None:
            self.adapter = Regressor.for_shapes(
                self.name, tuple(es.shape), tuple(et.shape), batchnorm=False
            ).to(es.device)

    def correlation(self, e: Tensor) -> Tensor:
        """``(B, D)`` embeddings -> ``(B, B)`` Taylor-approximated RBF correlation matrix."""
        e = F.normalize(e.float(), p=2, dim=1)
        sim = e @ e.t()
        corr = torch.zeros_like(sim)
        for p in range(self.P + 1):
            coef = math.exp(-2 * self.gamma) * (2 * self.gamma) ** p / math.factorial(p)
            corr = corr + coef * sim.pow(p)
        return corr

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        ((fs, ft),) = self._feature_pairs(student, teacher)
        es, et = as_embedding(fs), as_embedding(ft)
        if self.adapter is not None:
            es = self.adapter(es.float())
        elif es.shape[1] != et.shape[1]:
            raise ShapeMismatchError(
                f"cc: student embedding {describe(es.shape)} and teacher embedding "
                f"{describe(et.shape)} differ in width and no adapter was built; run "
                "setup() (Distiller.prepare does) on a first batch"
            )
        with _float32(es):
            return (self.correlation(es) - self.correlation(et)).pow(2).mean()

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, {self._layers_repr()}, gamma={self.gamma:g}, "
                f"P={self.P}")
