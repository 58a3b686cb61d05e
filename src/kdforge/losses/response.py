"""Response-based knowledge: terms on the output logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.base import LossTerm, check_logits_match, register_loss


def _targets(term: str, batch: Batch) -> Tensor:
    if batch.targets is None:
        raise ConfigError(f"the {term!r} loss needs labels, but the batch has no targets")
    return batch.targets


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


@register_loss("kd", source="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network")
class KD(LossTerm):
    """Hinton knowledge distillation: KL divergence between tempered softmaxes.

    ``L = T^2 * 1/B sum_b KL(softmax(t_b / T) || softmax(s_b / T))``

    where ``s``, ``t`` are the student's and teacher's logits ``(B, K)``. The ``T^2`` factor
    keeps the gradient scale independent of the temperature (Hinton et al. 2015, sec. 2).
    The CRD paper's CIFAR-100 benchmark uses ``T=4`` with weight 0.9 beside CE weight 0.1.
    Computed in float32 whatever the autocast dtype.
    """

    def __init__(self, weight: float = 1.0, T: float = 4.0) -> None:
        super().__init__(weight)
        if not T > 0:
            raise ConfigError(f"kd: temperature T must be > 0, got {T}")
        self.T = float(T)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        check_logits_match(self.name, student, teacher)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        assert teacher is not None
        log_p_s = F.log_softmax(student.logits.float() / self.T, dim=-1)
        log_p_t = F.log_softmax(teacher.logits.float() / self.T, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * self.T**2

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, T={self.T:g}"


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


__all__ = ["CE", "KD", "SoftCE"]
