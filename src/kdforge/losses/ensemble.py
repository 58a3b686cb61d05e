"""``aekd``: adaptive ensemble KD, the teachers weighted by the min-norm point of their gradients.

Du, You, Li, Wu, Wang, Qian & Zhang, "Agree to Disagree: Adaptive Ensemble Knowledge
Distillation in Gradient Space", NeurIPS 2020. With teachers ``m = 1..M``, student logits
``z_s`` and each teacher's KD loss

    L_m = T^2 * 1/B sum_b KL(softmax(z_m,b / T) || softmax(z_s,b / T)),

the student follows the common descent direction of the ``M`` objectives (multi-objective
optimisation, as MGDA): the weights are the minimum-norm point of the convex hull of the
teachers' gradients with respect to the student's logits, with the paper's tolerance ``C``
bounding each weight (their slack for the teachers' disagreement),

    alpha = argmin_a || sum_m a_m grad_{z_s} L_m ||^2   s.t.  sum_m a_m = 1,  0 <= a_m <= C,

and the student minimises ``L = sum_m alpha_m L_m`` with ``alpha`` held constant (no gradient
flows through the weights). ``C >= 1`` is plain MGDA (no bound); ``C = 1/M`` forces equal
weights, the average of the teachers' losses; ``C < 1/M`` admits no weights and is refused.
The authors' code defaults to ``C = 0.6`` with ``T = 4`` and KD weight 0.9 beside CE weight 1.

No extra backward pass is needed: ``grad_{z_s,b} L_m = T/B (p_s,b - p_m,b)`` with
``p = softmax(z / T)``, so the Gram matrix ``G_mn = <g_m, g_n>`` of the gradients is formed in
closed form, and the small quadratic programme ``min a^T G a`` over the capped simplex is
solved on the device, batched, by sequential minimal optimisation (pairwise steps between
the most violating pair of teachers, as libsvm solves the one-class SVM dual the authors'
code hands it), from the equal weights. Every iterate stays on the capped simplex, so the
bound and the sum hold whatever the number of iterations; two teachers are solved exactly
by the first step (Sener & Koltun's two-task closed form, clipped to ``[1 - C, C]``).

``per="batch"`` (default) solves once per mini-batch, as the paper and its code do, on the
gradient with respect to the whole batch's logits (``G = sum_b g_b g_b^T``; the authors' code
instead averages the per-sample gradients over the batch before taking the Gram matrix).
``per="sample"`` solves one programme per sample (``B`` weight vectors). Under
``torchrun`` each process solves on its own share of the batch.

The term reads the members' logits from an ensemble teacher's outputs
(:class:`~kdforge.teachers.ensemble.EnsembleOutputs.member_logits`); a single teacher is
refused before training.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.base import LossTerm, register_loss

#: Where the term solves for weights: once per mini-batch, or once per sample.
GRANULARITIES = ("batch", "sample")


def check_tolerance(C: float, teachers: int, what: str = "aekd: C") -> None:
    """Refuse a bound ``C`` under which no weights of ``teachers`` members sum to 1."""
    if not C * teachers >= 1.0 - 1e-9:
        raise ConfigError(
            f"{what} = {C:g} with {teachers} teachers: each weight is at most C and the "
            f"weights sum to 1, so C must be at least 1/{teachers} = {1.0 / teachers:.4g} "
            "(1/M: equal weights; 1 or more: no bound)"
        )


def min_norm_weights(gram: Tensor, C: float = 1.0, iterations: int = 10) -> Tensor:
    """The min-norm weights ``argmin_a a^T G a`` over ``{sum a = 1, 0 <= a <= C}``.

    Sequential minimal optimisation with the maximal violating pair (Keerthi et al. 2001,
    the solver of libsvm): from the equal weights, each step moves weight from the member
    with the largest ``(G a)_j`` that can still lose weight (``a_j > 0``) to the one with the
    smallest ``(G a)_i`` that can still gain it (``a_i < C``), by the exact minimiser along
    that direction clipped to the box. Every iterate stays on the capped simplex; at a
    fixed point ``max_{a_j > 0} (G a)_j <= min_{a_i < C} (G a)_i``, the KKT conditions of the
    programme. Two members are solved exactly by the first step. ``N`` problems at once.

    Args:
        gram: ``(N, M, M)`` positive semi-definite Gram matrices ``G_mn = <g_m, g_n>``.
        C: the bound on each weight (``>= 1/M``; ``>= 1``: unbounded).
        iterations: steps (each moves weight between one pair of members).

    Returns:
        ``(N, M)`` weights, each row on the capped simplex, in ``gram``'s dtype.
    """
    n, m, _ = gram.shape
    check_tolerance(C, m)
    cap = min(C, 1.0)
    alpha = gram.new_full((n, m), 1.0 / m)
    field = gram.sum(-1) / m                                             # G a
    tiny = (1e-12 * gram.diagonal(dim1=-2, dim2=-1).amax(-1)).clamp_min(
        torch.finfo(gram.dtype).tiny)
    for _ in range(iterations):
        down = field.masked_fill(alpha <= 0, float("-inf")).argmax(-1)  # gives weight
        up = field.masked_fill(alpha >= cap, float("inf")).argmin(-1)   # takes it
        d = (F.one_hot(up, m) - F.one_hot(down, m)).to(gram.dtype)      # (N, M)
        g_d = (gram @ d.unsqueeze(-1)).squeeze(-1)                       # G d
        gap = -(field * d).sum(-1)                                       # (G a)_down - (G a)_up
        curvature = (d * g_d).sum(-1)                                    # d^T G d
        room = torch.where(d > 0, cap - alpha, torch.where(d < 0, alpha, float("inf")))
        step = torch.minimum(gap / curvature.clamp_min(tiny), room.amin(-1)).clamp_min(0.0)
        alpha = alpha + step.unsqueeze(-1) * d
        field = field + step.unsqueeze(-1) * g_d
    return alpha


def logit_gradients(student_logits: Tensor, member_logits: Tensor, T: float) -> Tensor:
    """``p_s - p_m`` for every member: ``(M, B, K)``, proportional (by ``T / B``) to the
    gradients of the members' KD losses with respect to the student's logits; detached."""
    p_s = F.softmax(student_logits.detach().float() / T, dim=-1)
    p_m = F.softmax(member_logits.detach().float() / T, dim=-1)
    return p_s.unsqueeze(0) - p_m


def aekd_weights(student_logits: Tensor, member_logits: Tensor, *, T: float, C: float,
                 iterations: int = 10, per: str = "batch") -> Tensor:
    """AE-KD's teacher weights, ``(1, M)`` for ``per="batch"`` or ``(B, M)`` per sample.

    ``student_logits`` ``(B, K)``, ``member_logits`` ``(M, B, K)``. Solved in float64 where
    the device has it (the programme is tiny), returned in float32 and detached.
    """
    g = logit_gradients(student_logits, member_logits, T)
    dtype = torch.float32 if g.device.type == "mps" else torch.float64
    g = g.to(dtype)
    if per == "batch":
        gram = torch.einsum("mbk,nbk->mn", g, g).unsqueeze(0) / g.shape[1]
    else:
        gram = torch.einsum("mbk,nbk->bmn", g, g)
    return min_norm_weights(gram, C, iterations).float()


def member_logits_of(term: str, teacher: Outputs | None) -> Tensor:
    """The ``(M, B, K)`` member logits of an ensemble teacher's outputs; a ``ConfigError``
    naming the fix for a single teacher (or none)."""
    if teacher is None:
        raise ConfigError(f"the {term!r} loss needs a teacher ensemble; give 'teacher' a list "
                          "of two or more trained teachers")
    members = getattr(teacher, "member_logits", None)
    if members is None:
        raise ConfigError(
            f"the {term!r} loss weighs the teachers of an ensemble separately, but the run's "
            "teacher is a single network (or a soft-label store): give 'teacher' a list of "
            "two or more trained teachers"
        )
    return members


@register_loss("aekd", source='Du et al. 2020, "Agree to Disagree: Adaptive Ensemble Knowledge '
                              'Distillation in Gradient Space" (NeurIPS)')
class AEKD(LossTerm):
    """Adaptive ensemble KD: per-teacher KD losses weighted by their min-norm gradient point.

    ``L = sum_m alpha_m * T^2 * 1/B sum_b KL(softmax(z_m,b / T) || softmax(z_s,b / T))``
    with ``alpha`` the min-norm point of the teachers' logit gradients on ``{sum = 1,
    0 <= alpha_m <= C}``, held constant (module docstring). ``per="sample"``: one ``alpha``
    per sample, ``L = 1/B sum_b sum_m alpha_bm T^2 KL_bm``.

    Shapes: student logits ``(B, K)``; the teacher must be an ensemble of ``M >= 2`` members
    whose outputs carry ``member_logits`` ``(M, B, K)``.

    Args:
        weight: the term's coefficient.
        T: the softmax temperature (authors' code: 4).
        C: the tolerance, the bound on each teacher's weight (authors' default 0.6;
            ``>= 1/M``; ``>= 1`` is unbounded MGDA).
        iterations: pairwise steps of the weight solve (two teachers need one).
        per: ``"batch"`` (one weight vector per mini-batch, the paper's) or ``"sample"``.
    """

    def __init__(self, weight: float = 1.0, T: float = 4.0, C: float = 0.6,
                 iterations: int = 10, per: Literal["batch", "sample"] = "batch") -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"aekd: temperature T must be > 0, got {T}")
        if not C > 0:
            raise ConfigError(f"aekd: the tolerance C bounds each teacher's weight and must be "
                              f"> 0 (at least 1/teachers), got {C}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"aekd: iterations must be an integer >= 1, got {iterations!r}")
        if per not in GRANULARITIES:
            raise ConfigError(f"aekd: per must be one of {GRANULARITIES} (weights per "
                              f"mini-batch or per sample), got {per!r}")
        self.T, self.C, self.iterations, self.per = float(T), float(C), iterations, per

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        members = member_logits_of(self.name, teacher)
        if members.shape[0] < 2:
            raise ConfigError(f"aekd weighs two or more teachers; the ensemble has "
                              f"{members.shape[0]}: list more under 'teacher'")
        check_tolerance(self.C, members.shape[0])
        s, t = tuple(student.logits.shape), tuple(members.shape[1:])
        if s != t:
            raise ShapeMismatchError(
                f"aekd: student logits {s} and each teacher's logits {t} differ; build the "
                f"student with the teachers' classes"
            )

    def weights(self, student_logits: Tensor, member_logits: Tensor) -> Tensor:
        """The teachers' weights for these logits: ``(1, M)`` or ``(B, M)`` (see ``per``)."""
        return aekd_weights(student_logits, member_logits, T=self.T, C=self.C,
                            iterations=self.iterations, per=self.per)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        members = member_logits_of(self.name, teacher)
        s = student.logits.float()
        log_p_s = F.log_softmax(s / self.T, dim=-1)                      # (B, K)
        log_q = F.log_softmax(members.float() / self.T, dim=-1)          # (M, B, K)
        kl = (log_q.exp() * (log_q - log_p_s.unsqueeze(0))).sum(-1)      # (M, B)
        alpha = self.weights(s, members).t()                              # (M, 1) or (M, B)
        return (alpha * kl).sum(0).mean() * self.T**2

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, T={self.T:g}, C={self.C:g}, "
                f"iterations={self.iterations}, per={self.per!r}")


__all__ = ["AEKD", "GRANULARITIES", "aekd_weights", "check_tolerance",
           "logit_gradients", "member_logits_of", "min_norm_weights"]
