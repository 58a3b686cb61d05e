"""Response-based knowledge: terms on the output logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.base import LossTerm, check_logits_match, register_loss


def _targets(term: str, batch: Batch) -> Tensor:
    if batch.targets is None:
        raise ConfigError(f"the {term!r} loss needs labels, but the batch has no targets")
    return batch.targets


def _class_targets(term: str, batch: Batch, logits: Tensor, check_range: bool = False) -> Tensor:
    """The batch's ``(B,)`` class indices; ``ConfigError`` for missing or soft targets.

    ``check_range`` also checks every label against the class count (a device sync: for
    ``setup``, not for every step).
    """
    targets = _targets(term, batch)
    if targets.dtype.is_floating_point or targets.dim() != 1:
        raise ConfigError(
            f"the {term!r} loss needs (B,) class-index labels, got {targets.dtype} targets of "
            f"shape {tuple(targets.shape)} (soft or mixed labels); turn off label mixing "
            "(mixup/cutmix) for this term"
        )
    k = logits.shape[-1]
    if targets.shape[0] != logits.shape[0]:
        raise ShapeMismatchError(
            f"{term}: {targets.shape[0]} labels for logits {tuple(logits.shape)}"
        )
    if check_range and targets.numel() and (int(targets.max()) >= k or int(targets.min()) < 0):
        raise ShapeMismatchError(
            f"{term}: a label is outside [0, {k}) for logits {tuple(logits.shape)}; build the "
            "student and teacher with the data set's class count"
        )
    return targets


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row of ``(B, K)`` logits: ``(z - mean(z)) / (std(z) + eps)``.

    The standard deviation is the sample one (Bessel-corrected, ``torch.std``), as in the
    reference code of Sun et al. 2024; the paper writes the population one. They differ by
    the constant ``sqrt(K / (K - 1))``, i.e. a slightly different temperature.
    """
    mean = z.mean(dim=-1, keepdim=True)
    return (z - mean) / (z.std(dim=-1, keepdim=True) + eps)


@register_loss("ce", source="cross-entropy with hard labels; label smoothing: Szegedy et al. 2016")
class CE(LossTerm):
    """Cross-entropy of the student's logits with the ground-truth labels.

    ``L = -1/B sum_b log softmax(z_b)[y_b]``; with label smoothing ``eps`` the target is
    ``(1 - eps) * onehot(y) + eps / K`` (Szegedy et al. 2016, "Rethinking the Inception
    Architecture"). Targets may also be ``(B, K)`` probabilities (e.g. mixed labels).

    Shapes: student logits ``(B, K)``, targets ``(B,)`` int64 or ``(B, K)`` float.
    """

    needs_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"ce: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        targets = _targets(self.name, batch)
        k = student.logits.shape[-1]
        if targets.dtype.is_floating_point:
            if targets.shape != student.logits.shape:
                raise ShapeMismatchError(
                    f"ce: probability targets {tuple(targets.shape)} do not match student "
                    f"logits {tuple(student.logits.shape)}"
                )
        elif targets.numel() and int(targets.max()) >= k:
            raise ShapeMismatchError(
                f"ce: a label is {int(targets.max())} but the student predicts only {k} classes "
                f"(logits {tuple(student.logits.shape)}); build the student with the data "
                "set's class count"
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        return F.cross_entropy(
            student.logits.float(), _targets(self.name, batch),
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, label_smoothing={self.label_smoothing:g}"


class _SoftTargetKL(torch.autograd.Function):
    """``1/B sum_b KL(q_b || softmax(z_b))`` for fixed targets ``q`` (no gradient to them).

    Forward: ``sum q (log q - log p)`` with ``log p = z - logsumexp(z)`` (identical inputs
    give exactly 0, as ``kl_div`` does). Backward: the gradient ``(softmax(z) - q) / B``,
    written out in three ops instead of autograd's graph of the forward. Tested against
    ``kl_div`` and with ``gradcheck``.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, q: Tensor, log_q: Tensor) -> Tensor:
        log_p = z - z.logsumexp(-1, keepdim=True)
        ctx.save_for_backward(log_p, q)
        return (q * (log_q - log_p)).sum() / z.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        log_p, q = ctx.saved_tensors
        return log_p.exp().sub_(q).mul_(grad / log_p.shape[0]), None, None


def tempered_kl(s: Tensor, t: Tensor, T: float, t_probs: Tensor | None = None) -> Tensor:
    """``1/B sum_b KL(softmax(t_b / T) || softmax(s_b / T))`` for ``(B, K)`` logits.

    When the teacher side carries no gradient (a frozen teacher or stored labels) the KL is
    computed with ``logsumexp`` instead of ``log_softmax`` (:class:`_SoftTargetKL`): with
    ``q = softmax(t / T)`` and ``z = s / T``, ``KL = sum_c q_c (log q_c - z_c +
    logsumexp(z))``, and the gradient ``softmax(z) - q`` is written out. Same value and
    student gradient as ``kl_div`` of two log-softmaxes, in about half its time forward and
    backward on a CPU (``log_softmax`` of a ``(512, 10)`` tensor there costs about four
    ``logsumexp``): as cheap as cross-entropy with hard labels. ``t_probs``: ``q`` itself, when ``t`` are
    normalised log-probabilities that come with their probabilities (a soft-label store's
    :class:`Outputs`); used at ``T == 1`` only. A teacher side that needs gradients
    (mutual learning) takes ``kl_div``.
    """
    if T != 1.0:
        s, t, t_probs = s / T, t / T, None
    if t.requires_grad:
        return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1),
                        reduction="batchmean", log_target=True)
    if t_probs is None:
        log_q = t - t.logsumexp(-1, keepdim=True)
        q = log_q.exp()
    else:
        log_q, q = t, t_probs
    return _SoftTargetKL.apply(s, q, log_q)


@register_loss("kd", source="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network")
class KD(LossTerm):
    """Hinton knowledge distillation: KL divergence between tempered softmaxes.

    ``L = T^2 * 1/B sum_b KL(softmax(t_b / T) || softmax(s_b / T))``

    where ``s``, ``t`` are the student's and teacher's logits ``(B, K)``. The ``T^2`` factor
    keeps the gradient scale independent of the temperature (Hinton et al. 2015, sec. 2).
    The CRD paper's CIFAR-100 benchmark uses ``T=4`` with weight 0.9 beside CE weight 0.1.
    Computed in float32 whatever the autocast dtype.

    ``standardize=True`` is logit standardisation (Sun et al. 2024, "Logit Standardization
    in Knowledge Distillation", CVPR): each sample's logits of both sides are z-scored over
    the classes, ``(z - mean(z)) / std(z)`` (see :func:`standardize_logits`), before the
    division by ``T``. The loss then ignores any per-sample ``a * z + b`` (``a > 0``) of
    either side's logits: the student matches the teacher's logit *relations*, not their
    range. ``T`` acts as the paper's base temperature (the effective one is ``T * std``);
    their CIFAR-100 recipe is ``T=2`` with KD weight 9 beside CE weight 0.1
    (``configs/methods/kd_ls.yaml``).
    """

    def __init__(self, weight: float = 1.0, T: float = 4.0, standardize: bool = False) -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"kd: temperature T must be > 0, got {T}")
        self.T = float(T)
        self.standardize = bool(standardize)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        check_logits_match(self.name, student, teacher)
        if self.standardize and student.logits.shape[-1] < 2:
            raise ShapeMismatchError("kd with standardize=True needs at least 2 classes")

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        assert teacher is not None
        s, t = student.logits.float(), teacher.logits.float()
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
            return tempered_kl(s, t, self.T) * self.T**2
        return tempered_kl(s, t, self.T, teacher.probs) * self.T**2

    def extra_repr(self) -> str:
        extra = ", standardize=True" if self.standardize else ""
        return f"weight={self.weight:g}, T={self.T:g}{extra}"


@register_loss("soft_ce", source="soft-target cross-entropy (Hinton et al. 2015; FKD, Shen & Xing 2022)")
class SoftCE(LossTerm):
    """Cross-entropy of the student's tempered softmax with given probabilities.

    ``L = T^2 * 1/B sum_b sum_k -q_bk log softmax(s_b / T)_k``

    ``q`` is ``softmax(t / T)`` of the teacher's logits (``source="teacher"``; a stored
    teacher returns log-probabilities as logits) or the batch's ``(B, K)`` probability
    targets (``source="targets"``). It differs from :class:`KD` by the entropy of ``q``,
    a constant for the student, so it has the same gradients; it is the natural loss for
    soft labels read back from a store.
    """

    def __init__(self, weight: float = 1.0, T: float = 1.0, source: str = "teacher") -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"soft_ce: temperature T must be > 0, got {T}")
        if source not in ("teacher", "targets"):
            raise ConfigError(f"soft_ce: source must be 'teacher' or 'targets', got {source!r}")
        self.T = float(T)
        self.source = source
        if source == "targets":
            self.needs_teacher = False

    def _probabilities(self, teacher: Outputs | None, batch: Batch) -> Tensor:
        if self.source == "targets":
            return _targets(self.name, batch).float()
        assert teacher is not None
        return F.softmax(teacher.logits.float() / self.T, dim=-1)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        if self.source == "teacher":
            check_logits_match(self.name, student, teacher)
            return
        q = _targets(self.name, batch)
        if not q.dtype.is_floating_point or q.shape != student.logits.shape:
            raise ShapeMismatchError(
                f"soft_ce with source='targets' needs (B, K) probability targets shaped like "
                f"the student logits {tuple(student.logits.shape)}; got {q.dtype} "
                f"{tuple(q.shape)}"
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        q = self._probabilities(teacher, batch)
        log_p_s = F.log_softmax(student.logits.float() / self.T, dim=-1)
        return -(q * log_p_s).sum(dim=-1).mean() * self.T**2

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, T={self.T:g}, source={self.source!r}"


@register_loss("dkd", source='Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation" (CVPR)')
class DKD(LossTerm):
    """Decoupled KD: target-class and non-target-class KL weighted separately.

    Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation" (CVPR). With
    ``p = softmax(z / T)`` on each side and ``y`` the label, let ``b = [p_y, 1 - p_y]``
    (binary: target vs all other classes) and ``p_hat = softmax(z_{k != y} / T)`` (the
    distribution among the ``K - 1`` non-target classes). Then

    ``TCKD = T^2 * KL(b_teacher || b_student)``,
    ``NCKD = T^2 * KL(p_hat_teacher || p_hat_student)``,
    ``L = 1/B sum_b (alpha * TCKD_b + beta * NCKD_b)``.

    Classic KD is ``TCKD + (1 - p_y_teacher) * NCKD`` per sample (the paper's eq. 5):
    DKD frees NCKD from the teacher's confidence factor. Both parts are computed from
    log-sum-exps of the logits, so a teacher with ``p_y = 1`` in float32 gives no NaN.

    Shapes: logits ``(B, K)`` (``K >= 2``), labels ``(B,)`` class indices (``ConfigError``
    for soft or missing labels). Defaults are the paper's CIFAR-100 setting: ``alpha=1``,
    ``beta=8``, ``T=4``, beside CE weight 1 (ImageNet: ``beta=0.5``, ``T=1``). The paper
    ramps the DKD loss linearly over the first 20 epochs; in kdforge that is the weight
    schedule, ``warmup_epochs: 20`` on the loss entry (``configs/methods/dkd.yaml``).
    ``standardize=True`` z-scores the logits first (Sun et al. 2024; see :class:`KD`).
    """

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0,
                 T: float = 4.0, standardize: bool = False) -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"dkd: temperature T must be > 0, got {T}")
        if not (alpha >= 0 and beta >= 0):
            raise ConfigError(f"dkd: alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(T)
        self.standardize = bool(standardize)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        check_logits_match(self.name, student, teacher)
        if student.logits.shape[-1] < 2:
            raise ShapeMismatchError(
                f"dkd needs at least 2 classes, got logits {tuple(student.logits.shape)}"
            )
        _class_targets(self.name, batch, student.logits, check_range=True)

    def parts(self, student: Outputs, teacher: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-sample ``(TCKD, NCKD)``, each ``(B,)`` and already multiplied by ``T^2``."""
        s, t = student.logits.float(), teacher.logits.float()
        y = _class_targets(self.name, batch, s)
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        s, t = s / self.T, t / self.T
        is_target = F.one_hot(y, s.shape[-1]).bool()

        def binary_log_probs(z: Tensor) -> Tensor:  # (B, 2): log p_y, log (1 - p_y)
            total = z.logsumexp(-1)
            target = z.gather(1, y[:, None]).squeeze(1)
            others = z.masked_fill(is_target, float("-inf")).logsumexp(-1)
            return torch.stack([target - total, others - total], dim=1)

        def non_target_log_probs(z: Tensor) -> Tensor:  # (B, K - 1)
            return F.log_softmax(z[~is_target].view(z.shape[0], -1), dim=-1)

        def kl(log_p: Tensor, log_q: Tensor) -> Tensor:  # KL(p || q) per row
            return (log_p.exp() * (log_p - log_q)).sum(-1)

        tckd = kl(binary_log_probs(t), binary_log_probs(s))
        nckd = kl(non_target_log_probs(t), non_target_log_probs(s))
        return tckd * self.T**2, nckd * self.T**2

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        assert teacher is not None
        tckd, nckd = self.parts(student, teacher, batch)
        return (self.alpha * tckd + self.beta * nckd).mean()

    def extra_repr(self) -> str:
        extra = ", standardize=True" if self.standardize else ""
        return (f"weight={self.weight:g}, alpha={self.alpha:g}, beta={self.beta:g}, "
                f"T={self.T:g}{extra}")


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register_loss("dist", source='Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger '
                               'Teacher" (NeurIPS)')
class DIST(LossTerm):
    """DIST: match the correlation of predictions, within samples and within classes.

    Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger Teacher"
    (NeurIPS). With ``Y_s = softmax(s / T)``, ``Y_t = softmax(t / T)`` of shape ``(B, K)``
    and ``rho`` the Pearson correlation coefficient:

    ``inter = 1 - 1/B sum_b rho(Y_s[b, :], Y_t[b, :])``  (each sample's class ranking),
    ``intra = 1 - 1/K sum_k rho(Y_s[:, k], Y_t[:, k])``  (each class across the batch),
    ``L = beta * T^2 * inter + gamma * T^2 * intra``.

    Pearson correlation ignores any positive affine map of the probabilities, so the
    student need not match the (stronger) teacher's exact values, only their relations.
    ``rho`` uses ``eps = 1e-8`` in its denominator (as the authors' code); a class whose
    probability is constant over the batch contributes correlation 0.

    Shapes: logits ``(B, K)``; the intra-class term needs ``B >= 2``. Defaults
    ``beta = gamma = 1``, ``T = 1`` are the paper's ImageNet setting and the defaults of the
    authors' loss. For CIFAR-100 the authors' code uses ``T = 4``; ``beta = gamma = 2`` is
    the CIFAR-100 setting attributed to the paper (not re-checked against its text);
    ``configs/methods/dist.yaml`` uses both. CE weight 1 beside it.
    """

    def __init__(self, weight: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                 T: float = 1.0) -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"dist: temperature T must be > 0, got {T}")
        if not (beta >= 0 and gamma >= 0):
            raise ConfigError(f"dist: beta and gamma must be >= 0, got {beta}, {gamma}")
        self.beta, self.gamma, self.T = float(beta), float(gamma), float(T)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        check_logits_match(self.name, student, teacher)
        if self.gamma > 0 and student.logits.shape[0] < 2:
            raise ShapeMismatchError(
                f"dist: the intra-class relation correlates each class over the batch and "
                f"needs a batch of at least 2, got logits {tuple(student.logits.shape)}"
            )

    def relations(self, student: Outputs, teacher: Outputs) -> tuple[Tensor, Tensor]:
        """``(inter, intra)`` before the ``T^2`` and the ``beta``/``gamma`` factors."""
        y_s = F.softmax(student.logits.float() / self.T, dim=-1)
        y_t = F.softmax(teacher.logits.float() / self.T, dim=-1)
        inter = 1 - _pearson_rows(y_s, y_t).mean()
        intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
        return inter, intra

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        assert teacher is not None
        inter, intra = self.relations(student, teacher)
        return self.T**2 * (self.beta * inter + self.gamma * intra)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, beta={self.beta:g}, gamma={self.gamma:g}, "
                f"T={self.T:g}")


__all__ = ["CE", "DIST", "DKD", "KD", "SoftCE", "standardize_logits"]
