"""Contrastive knowledge: the student's embedding must single out the teacher's embedding of
the same sample among many others (CRD)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core import comm
from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import describe
from kdforge.losses.base import LossTerm, register_loss


def _nce_loss(logits: Tensor, log_z: Tensor | float, num_samples: int) -> Tensor:
    """The NCE loss of CRD (eq. 18) for one direction, from scores ``v . m / T``.

    ``logits`` is ``(B, 1 + K)``: column 0 the positive, then ``K`` negatives. With
    ``P = exp(logit) / Z`` and ``c = K / N`` (``K`` times the noise probability ``1/N``),
    ``D = P / (P + c)`` and the loss is ``-1/B sum_b [log D_b0 + sum_k log(1 - D_bk)]``.
    Evaluated in log space: ``log D = log P - log(P + c)``, ``log(1 - D) = log c -
    log(P + c)`` (the official code adds eps = 1e-7 to ``P + c``; negligible beside ``c``).
    """
    k = logits.shape[1] - 1
    log_p = logits - log_z
    log_c = math.log(k / num_samples)
    log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, log_c))
    log_d_positive = log_p[:, 0] - log_denominator[:, 0]
    log_not_d_negatives = (log_c - log_denominator[:, 1:]).sum(dim=1)
    return -(log_d_positive + log_not_d_negatives).mean()


def momentum_update_(bank: Tensor, index: Tensor, values: Tensor, momentum: float) -> None:
    """``bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * v)`` for each ``(i, v)``.

    ``bank`` is ``(N, D)``, ``index`` ``(M,)``, ``values`` ``(M, D)``. Updates are applied
    in the order given: an index that occurs twice (a padded last batch under torchrun) is
    updated twice, the second time from the first result, so the outcome is deterministic
    and the same on every rank that applies the same list.
    """
    index = index.to(device=bank.device, dtype=torch.long)
    values = values.to(device=bank.device, dtype=bank.dtype)
    occurrence = torch.zeros_like(index)
    if index.numel() > 1:
        sorted_index, order = torch.sort(index, stable=True)
        positions = torch.arange(index.numel(), device=index.device)
        starts = torch.ones_like(sorted_index, dtype=torch.bool)
        starts[1:] = sorted_index[1:] != sorted_index[:-1]
        group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
        occurrence[order] = positions - group_start
    rounds = int(occurrence.max()) + 1 if index.numel() else 0
    for r in range(rounds):
        chosen = occurrence == r if rounds > 1 else slice(None)
        rows, new = index[chosen], values[chosen]
        mixed = bank.index_select(0, rows) * momentum + new * (1.0 - momentum)
        mixed = mixed / mixed.norm(dim=1, keepdim=True).clamp_min(1e-12)
        bank.index_copy_(0, rows, mixed)


@register_loss("crd", source="Tian, Krishnan & Isola 2020, Contrastive Representation "
                             "Distillation (ICLR)")
class CRD(LossTerm):
    """Contrastive representation distillation: NCE against a memory bank of embeddings.

    Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" (ICLR); the
    behaviour follows the authors' code (HobbitLong/RepDistiller, ``crd/``).

    Embeddings: ``v_s = g_s(f_s) / ||g_s(f_s)||``, ``v_t = g_t(f_t) / ||g_t(f_t)||`` with
    linear heads ``g_s``, ``g_t`` (both trained: they belong to the loss, not to the teacher)
    from the flattened penultimate features ``f_s`` ``(B, ...)``, ``f_t`` ``(B, ...)`` to
    ``feat_dim``. Memory: for each of the ``N`` training samples a stored student embedding
    ``M_s[i]`` and teacher embedding ``M_t[i]`` (buffers ``(N, feat_dim)``, saved in
    checkpoints), initialised uniformly in ``[-a, a]``, ``a = sqrt(3 / feat_dim)`` (rows of
    norm about 1), and after each training step updated at the batch's rows ``i``:
    ``M_s[i] <- normalise(m M_s[i] + (1 - m) v_s)``, the same for ``M_t``.

    For an anchor ``b`` with data-set index ``i_b`` and ``K`` negatives ``j_1..j_K`` drawn
    uniformly (with replacement) from ``0..N-1``, the student-anchor direction scores
    ``P(j) = exp(v_s . M_t[j] / T) / Z_s`` and, with ``D(j) = P(j) / (P(j) + K/N)`` (noise
    distribution ``Pn = 1/N``),

        ``L_s = -1/B sum_b [ log D(i_b) + sum_k log(1 - D(j_k)) ]``

    ``L_t`` is the same with the teacher's embedding as anchor against ``M_s``; the term
    returns ``L_s + L_t``. ``Z_s``, ``Z_t`` are estimated once, on the first forward, as
    ``N * mean(exp(score / T))`` over that batch's ``B x (K+1)`` scores, and then frozen
    (saved with the bank). The scores use the bank *before* this batch's update; the bank
    is updated only in training mode (``term.train()``, the default).

    Needs ``batch.index`` (``(B,)`` positions of the samples in the training set) and the
    training set's size ``N``: ``num_samples=N``, or the trainer's call of
    :meth:`bind_dataset_size` before :meth:`setup`.

    Under ``torch.distributed`` every rank computes the loss of its own samples, but the
    bank update uses the (index, ``v_s``, ``v_t``) of the *global* batch, gathered from all
    ranks and applied in rank order, and ``Z`` is estimated from all ranks' first batches,
    so every rank holds the same bank and constants (those of a one-process run over the
    global batch). Only the negatives differ between ranks: they are random draws.

    Defaults (the paper and its code): ``feat_dim=128``, ``nce_k=16384`` (capped at
    ``N - 1`` on small data), ``nce_t=0.07``, ``nce_m=0.5``. Weight 0.8: the CRD paper's
    CIFAR-100 benchmark (``train_student.py -r 1 -a 0 -b 0.8``: CE weight 1, KD weight 0,
    CRD 0.8; "CRD+KD" sets KD weight 1). That benchmark draws the negatives from samples of
    *other classes* (its data set's ``mode='exact'``); this term draws them uniformly from
    all samples, as the paper's formulation and the memory's own sampler do.

    Args:
        student_layer / teacher_layer: the penultimate features (e.g. ``"pool"`` or
            ``"fc@input"``); any rank, flattened per sample.
        feat_dim: the embedding size.
        nce_k: negatives per anchor.
        nce_t: the temperature ``T``.
        nce_m: the bank's momentum ``m``.
        num_samples: ``N``; None: told by the trainer through :meth:`bind_dataset_size`.
        generator: a ``torch.Generator`` for the negatives (default: torch's global RNG);
            for other sampling schemes override :meth:`sample_negatives`.
    """

    #: Buffers this term keeps identical on every rank itself (global-batch updates), so a
    #: ``DistributedDataParallel`` wrapper need not broadcast them from rank 0 before every
    #: forward (2 x N x feat_dim floats): pass their full names to
    #: ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``.
    synced_buffers: ClassVar[tuple[str, ...]] = ("memory_student", "memory_teacher", "z")

    def __init__(self, weight: float = 0.8, *, student_layer: str | None = None,
                 teacher_layer: str | None = None,
                 feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5, num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(weight)
        for option, value in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"crd: {option} must name a layer (str) of the penultimate features, e.g. "
                    f"'pool' or 'fc@input'; got {value!r}"
                )
        if not (isinstance(feat_dim, int) and feat_dim > 0):
            raise ConfigError(f"crd: feat_dim must be a positive int, got {feat_dim!r}")
        if not (isinstance(nce_k, int) and nce_k > 0):
            raise ConfigError(f"crd: nce_k must be a positive int, got {nce_k!r}")
        if not nce_t > 0:
            raise ConfigError(f"crd: temperature nce_t must be > 0, got {nce_t}")
        if not 0.0 <= nce_m < 1.0:
            raise ConfigError(f"crd: momentum nce_m must be in [0, 1), got {nce_m}")
        if num_samples is not None:
            self._check_size(num_samples, "num_samples")
        self.student_layer: str = student_layer  # type: ignore[assignment]
        self.teacher_layer: str = teacher_layer  # type: ignore[assignment]
        self.feat_dim, self.nce_k = feat_dim, nce_k
        self.nce_t, self.nce_m = float(nce_t), float(nce_m)
        self.num_samples = num_samples
        self.generator = generator
        self.embed_student: nn.Linear | None = None
        self.embed_teacher: nn.Linear | None = None
        # Built by setup() once N and the device are known; saved in checkpoints.
        self.register_buffer("memory_student", None, persistent=True)
        self.register_buffer("memory_teacher", None, persistent=True)
        #: Z of the student-anchor and the teacher-anchor directions; -1: not estimated yet.
        self.register_buffer("z", torch.full((2,), -1.0), persistent=True)
        self._z_known: bool | None = None
        #: None: choose how scores are computed by memory use; True/False force a way (tests).
        self._full_scores: bool | None = None

    # -- configuration ---------------------------------------------------------------------
    @staticmethod
    def _check_size(n: object, what: str) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError(f"crd: {what} must be an int >= 2 (the training set's size), "
                              f"got {n!r}")

    def student_features(self) -> list[str]:
        return [self.student_layer]

    def teacher_features(self) -> list[str]:
        return [self.teacher_layer]

    def bind_dataset_size(self, num_samples: int) -> None:
        """Set ``N`` (the training set's size) before :meth:`setup`; the trainer calls it."""
        self._check_size(num_samples, "the training set's size")
        if self.num_samples is not None and self.num_samples != num_samples:
            raise ConfigError(
                f"crd: num_samples={self.num_samples} but the training set has {num_samples} "
                "samples; remove num_samples (the trainer supplies it) or correct it"
            )
        self.num_samples = num_samples

    def _size(self) -> int:
        if self.num_samples is None:
            raise ConfigError(
                "crd: the memory bank needs the training set's size N; pass "
                "CRD(num_samples=len(train_set), ...) or call term.bind_dataset_size(N) "
                "before the distiller's first step (kdforge's trainer does this itself)"
            )
        return self.num_samples

    # -- set-up ----------------------------------------------------------------------------
    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        """Build the heads from the first batch's feature sizes and the ``(N, feat_dim)``
        banks; under ``torch.distributed`` rank 0's copies are broadcast (every rank must
        call it)."""
        if teacher is None:
            raise ConfigError("the 'crd' loss needs a teacher; give one or remove the term")
        f_s = student.feature(self.student_layer, "student")
        f_t = teacher.feature(self.teacher_layer, "teacher")
        s, t = tuple(f_s.shape), tuple(f_t.shape)
        if f_s.dim() < 2 or f_t.dim() < 2 or s[0] != t[0]:
            raise ShapeMismatchError(
                f"crd: student feature {self.student_layer!r} {describe(s)} and teacher feature "
                f"{self.teacher_layer!r} {describe(t)} must both be (B, ...) with the same batch "
                "size B; pick per-sample layers such as the pooled penultimate features"
            )
        n = self._size()
        device = f_s.device
        s_dim, t_dim = f_s[0].numel(), f_t[0].numel()
        if self.embed_student is None or self.embed_student.in_features != s_dim:
            self.embed_student = nn.Linear(s_dim, self.feat_dim).to(device)
        if self.embed_teacher is None or self.embed_teacher.in_features != t_dim:
            self.embed_teacher = nn.Linear(t_dim, self.feat_dim).to(device)
        if self.memory_student is None or tuple(self.memory_student.shape) != (n, self.feat_dim):
            bound = 1.0 / math.sqrt(self.feat_dim / 3.0)
            self.memory_student = (torch.rand(n, self.feat_dim) * 2 - 1).mul_(bound).to(device)
            self.memory_teacher = (torch.rand(n, self.feat_dim) * 2 - 1).mul_(bound).to(device)
            self.z = torch.full((2,), -1.0, device=device)
            self._z_known = False
        if comm.is_distributed():
            for tensor in (*self.embed_student.parameters(), *self.embed_teacher.parameters(),
                           self.memory_student, self.memory_teacher, self.z):
                comm.broadcast_(tensor, src=0)
            self._z_known = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._z_known = None  # re-read the restored constants

    # -- the loss --------------------------------------------------------------------------
    def sample_negatives(self, batch_size: int, k: int, device: torch.device) -> Tensor:
        """``(batch_size, k)`` indices drawn uniformly, with replacement, from ``0..N-1``."""
        n = self._size()
        if self.generator is None:
            return torch.randint(0, n, (batch_size, k), device=device)
        drawn = torch.randint(0, n, (batch_size, k), generator=self.generator,
                              device=self.generator.device)
        return drawn.to(device)

    def _index(self, batch: Batch, batch_size: int, device: torch.device) -> Tensor:
        if batch.index is None:
            raise ConfigError(
                "the 'crd' loss needs batch.index, the samples' positions in the training set "
                "(its memory bank has one row per sample); use a kdforge data set or yield "
                "dicts with an 'index' entry, or call distiller(x, y, index=positions)"
            )
        index = batch.index
        if index.dtype.is_floating_point or index.dim() != 1 or index.shape[0] != batch_size:
            raise ConfigError(
                f"crd: batch.index must be a ({batch_size},) integer tensor, got "
                f"{index.dtype} {describe(tuple(index.shape))}"
            )
        n = self._size()
        low, high = torch.aminmax(index)
        if int(low) < 0 or int(high) >= n:
            raise ConfigError(
                f"crd: batch.index holds {int(low)}..{int(high)} but the memory bank has N={n} "
                "rows; num_samples must be the training set's size"
            )
        return index.to(device=device, dtype=torch.long)

    def _embed(self, head: nn.Linear, feature: Tensor) -> Tensor:
        return F.normalize(head(feature.flatten(1).float()), dim=1)

    def _scores(self, anchor: Tensor, bank: Tensor, rows: Tensor) -> Tensor:
        """``(B, 1+K)`` dot products ``anchor[b] . bank[rows[b, j]]`` (bank not differentiated).

        Either all ``B x N`` products then a gather (on a copy of the bank, which backward
        needs and the update after the forward overwrites), or the ``B x (1+K)`` rows
        gathered then multiplied, whichever holds less memory."""
        bank = bank.detach()
        n, d = bank.shape
        b, columns = rows.shape
        full = self._full_scores
        if full is None:
            full = n * (d + b) <= b * columns * d
        if full:
            if torch.is_grad_enabled() and anchor.requires_grad:
                bank = bank.clone()
            return (anchor @ bank.t()).gather(1, rows)
        picked = bank.index_select(0, rows.reshape(-1)).view(*rows.shape, d)
        return torch.bmm(picked, anchor.unsqueeze(2)).squeeze(2)

    @torch.no_grad()
    def _estimate_z(self, logits_s: Tensor, logits_t: Tensor) -> None:
        """``Z = N * mean(exp(scores / T))`` over the (global) first batch; frozen after."""
        n = self._size()
        stats = torch.stack([logits_s.exp().sum(), logits_t.exp().sum(),
                             torch.tensor(float(logits_s.numel()), device=logits_s.device)])
        stats = comm.all_reduce_sum(stats.double())
        self.z.copy_((stats[:2] / stats[2] * n).to(self.z.dtype))
        self._z_known = True

    def _z_ready(self) -> bool:
        if self._z_known is None:
            self._z_known = bool((self.z > 0).all())
        return self._z_known

    @torch.no_grad()
    def _update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """Apply the global batch's momentum updates, identically on every rank."""
        assert self.memory_student is not None and self.memory_teacher is not None
        index = comm.all_gather_cat(index)
        both = comm.all_gather_cat(torch.cat([v_s, v_t], dim=1))
        d = self.feat_dim
        momentum_update_(self.memory_student, index, both[:, :d], self.nce_m)
        momentum_update_(self.memory_teacher, index, both[:, d:], self.nce_m)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        if teacher is None:
            raise ConfigError("the 'crd' loss needs a teacher; give one or remove the term")
        if self.embed_student is None or self.embed_teacher is None or self.memory_student is None:
            raise ConfigError("crd: setup() has not run (it builds the embedding heads and the "
                              "memory bank); the Distiller calls it on its first batch")
        f_s = student.feature(self.student_layer, "student")
        f_t = teacher.feature(self.teacher_layer, "teacher").detach()
        n = self._size()
        if tuple(self.memory_student.shape) != (n, self.feat_dim):
            raise ConfigError(f"crd: the memory bank has {self.memory_student.shape[0]} rows but "
                              f"N={n}; run setup() again after changing the data set")
        batch_size, device = f_s.shape[0], f_s.device
        index = self._index(batch, batch_size, device)
        k = min(self.nce_k, n - 1)
        rows = torch.cat([index.unsqueeze(1), self.sample_negatives(batch_size, k, device)], 1)
        with torch.autocast(device_type=device.type, enabled=False):
            v_s = self._embed(self.embed_student, f_s)
            v_t = self._embed(self.embed_teacher, f_t)
            # student anchors against the teacher bank, teacher anchors against the student's
            logits_s = self._scores(v_s, self.memory_teacher, rows) / self.nce_t
            logits_t = self._scores(v_t, self.memory_student, rows) / self.nce_t
            if not self._z_ready():
                self._estimate_z(logits_s.detach(), logits_t.detach())
            log_z = self.z.log()
            loss = _nce_loss(logits_s, log_z[0], n) + _nce_loss(logits_t, log_z[1], n)
        if self.training:
            self._update_memory(index, v_s.detach(), v_t.detach())
        return loss

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, student_layer={self.student_layer!r}, "
                f"teacher_layer={self.teacher_layer!r}, feat_dim={self.feat_dim}, "
                f"nce_k={self.nce_k}, nce_t={self.nce_t:g}, nce_m={self.nce_m:g}, "
                f"num_samples={self.num_samples}")


__all__ = ["CRD"]
