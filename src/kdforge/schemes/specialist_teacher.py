"""A generalist and its specialists as one teacher, and how classes are given to specialists.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, section 5.

Assigning classes (sec. 5.2): the covariance matrix ``C = cov(p^g)`` (``K x K``) of the
generalist's predicted probabilities over held-out samples has similar columns for
classes that are predicted together (confused); K-means on the ``K`` columns groups them
into the specialists' subsets ``S^m`` (:func:`cluster_classes`; seeded k-means++ with
restarts, every subset with at least two classes).

Inference (sec. 5.3): for a sample, let ``k`` be the ``n`` most probable classes of the
generalist and ``A_k`` the specialists whose subset meets ``k``. The combined
distribution is

    q* = argmin_q  KL(p^g || q) + sum_{m in A_k} KL(p^m || A_m q),

where ``p^m`` is specialist ``m``'s distribution over its ``|S^m|`` classes plus one
dustbin class and ``A_m q`` maps ``q`` onto them: ``(A_m q)_j = q_j`` for ``j`` in
``S^m``, the dustbin gets ``sum_{j not in S^m} q_j``. With ``q = softmax(z)`` the minimum
is found by gradient descent on the logits ``z`` (started at ``log p^g``; Adam steps with
the gradient in closed form, :func:`combination_gradient`), for every sample at once. Each sample's objective is divided by its number of terms
``1 + |A_k|`` for the descent (the minimiser is unchanged, one step size fits all). With
no active specialist ``q* = p^g``.

A specialist trained on a subset whose dustbin samples were undersampled (sec. 5.1) has
its dustbin logit raised by ``log(n_rest / n_rest_kept)``, the log of the factor by which
its special classes were oversampled (:func:`dustbin_shifts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.core.teacher import Teacher
from kdforge.teachers.module import ModuleTeacher

# -- assigning classes to specialists (sec. 5.2) ---------------------------------------------


def prediction_covariance(probs: Tensor) -> Tensor:
    """The ``(K, K)`` covariance of predicted class probabilities ``(N, K)`` over samples."""
    p = probs.double()
    centred = p - p.mean(0, keepdim=True)
    return centred.T @ centred / max(1, p.shape[0] - 1)


def kmeans(points: Tensor, k: int, *, seed: int = 0, restarts: int = 10,
           iterations: int = 100) -> Tensor:
    """Labels ``(N,)`` of the lowest-inertia of ``restarts`` seeded k-means++ / Lloyd runs."""
    x = points.double()
    gen = torch.Generator().manual_seed(int(seed))
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = _kmeans_pp(x, k, gen)
        labels = torch.cdist(x, centres).argmin(1)
        for _ in range(iterations):
            for c in range(k):
                if (labels == c).any():
                    centres[c] = x[labels == c].mean(0)
            new = torch.cdist(x, centres).argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels.clone(), inertia
    assert best is not None
    return best


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    for _ in range(1, k):
        d2 = torch.cdist(x, x[chosen]).min(1).values ** 2
        d2[chosen] = 0.0
        if float(d2.sum()) <= 0.0:  # every point is a centre already: any other one
            rest = [i for i in range(n) if i not in chosen]
            chosen.append(rest[int(torch.randint(len(rest), (1,), generator=gen))])
        else:
            chosen.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)))
    return x[chosen].clone()


def enforce_min_size(points: Tensor, labels: Tensor, k: int, min_size: int = 2) -> Tensor:
    """Move points into clusters smaller than ``min_size``: the nearest point of a cluster
    that can spare one (into an empty cluster: the point farthest from its own centre)."""
    x, labels = points.double(), labels.clone()
    if x.shape[0] < k * min_size:
        raise ConfigError(f"{x.shape[0]} classes cannot make {k} subsets of at least "
                          f"{min_size} classes")
    while True:
        sizes = torch.bincount(labels, minlength=k)
        small = (sizes < min_size).nonzero().reshape(-1)
        if small.numel() == 0:
            return labels
        c = int(small[0])
        donors = (sizes[labels] > min_size).nonzero().reshape(-1)
        if sizes[c] > 0:
            d = torch.cdist(x[donors], x[labels == c].mean(0, keepdim=True)).reshape(-1)
            pick = donors[int(d.argmin())]
        else:
            centres = torch.stack([x[labels == int(j)].mean(0) for j in labels[donors]])
            pick = donors[int(((x[donors] - centres) ** 2).sum(1).argmax())]
        labels[pick] = c


def cluster_classes(probs: Tensor, num_clusters: int, *, seed: int = 0,
                    min_size: int = 2) -> list[list[int]]:
    """The specialists' class subsets from predictions ``(N, K)``: K-means on the columns
    of their covariance matrix (sec. 5.2); sorted, each with ``min_size`` classes or more."""
    columns = prediction_covariance(probs).T  # row j = column j of C
    labels = enforce_min_size(columns, kmeans(columns, num_clusters, seed=seed),
                              num_clusters, min_size)
    clusters = [sorted(int(i) for i in (labels == c).nonzero().reshape(-1))
                for c in range(num_clusters)]
    return sorted(clusters)


def dustbin_shifts(targets: Tensor, clusters: Sequence[Sequence[int]],
                   rest_ratio: float | None) -> list[float]:
    """Per specialist, ``log(n_rest / n_rest_kept)``: the dustbin logit's correction for the
    rest samples its training set left out (as ``data.rest_ratio`` keeps them)."""
    shifts = []
    for subset in clusters:
        special = int(torch.isin(targets, torch.as_tensor(list(subset))).sum())
        rest = int(targets.numel()) - special
        kept = rest if rest_ratio is None else min(rest, int(round(rest_ratio * special)))
        shifts.append(math.log(rest / kept) if kept > 0 else 0.0)
    return shifts


def check_clusters(clusters: Sequence[Sequence[int]], num_classes: int) -> None:
    """Refuse class subsets that a specialist cannot be trained on (``ConfigError``)."""
    if not clusters:
        raise ConfigError("scheme.clusters lists no class subset; give one per specialist")
    for subset in clusters:
        if not subset or len(set(subset)) != len(subset) or len(subset) >= num_classes \
                or not all(0 <= int(c) < num_classes for c in subset):
            raise ConfigError(f"class subset {list(subset)} of scheme.clusters must hold "
                              f"distinct classes of 0..{num_classes - 1}, fewer than all "
                              f"{num_classes} (the others make the dustbin class)")


# -- the combination (sec. 5.3) --------------------------------------------------------------


def mapped_log_q(log_q: Tensor, member: Tensor) -> Tensor:
    """``log A_m q`` ``(B, |S^m| + 1)``: ``log q`` of the subset's classes (in subset order,
    ``member`` holds their indices), then the log of the mass of all the others."""
    rest = torch.ones(log_q.shape[-1], dtype=torch.bool, device=log_q.device)
    rest[member] = False
    return torch.cat([log_q[:, member], torch.logsumexp(log_q[:, rest], -1, keepdim=True)], -1)


def combination_objective(log_q: Tensor, log_pg: Tensor, specialist_logp: Sequence[Tensor],
                          members: Sequence[Tensor], active: Tensor) -> Tensor:
    """Per sample ``(B,)``: ``KL(p^g || q) + sum_m active[b, m] KL(p^m || A_m q)``.

    ``specialist_logp[m]`` is ``(B, |S^m| + 1)`` (any values where ``m`` is inactive)."""
    pg = log_pg.exp()
    total = (torch.xlogy(pg, pg) - pg * log_q).sum(-1)
    for m, (logp, member) in enumerate(zip(specialist_logp, members, strict=True)):
        p = logp.exp() * active[:, m:m + 1].to(logp.dtype)
        total = total + (torch.xlogy(p, p) - p * mapped_log_q(log_q, member)).sum(-1)
    return total


def combination_gradient(z: Tensor, targets: Tensor, dustbin: Tensor, rest: Tensor,
                         terms: Tensor) -> Tensor:
    """``d/dz`` of :func:`combination_objective` divided by its number of terms ``T_b =
    1 + |A_k|``, at ``q = softmax(z)``: ``q - r`` with

        r_i = (p^g_i + sum_m a_m [i in S^m] p^m_i + sum_m a_m [i not in S^m] p^m_dustbin
               q_i / sum_{l not in S^m} q_l) / T_b,

    (each term's weights sum to 1, so ``sum_i r_i = 1``). ``targets`` ``(B, K)`` holds the
    first two sums, ``dustbin`` ``(B, M)`` the ``a_m p^m_dustbin``, ``rest`` ``(M, K)`` the
    indicator of the classes outside ``S^m``, ``terms`` ``(B, 1)`` the ``T_b``."""
    q = F.softmax(z, -1)
    mass = (q @ rest.T).clamp_min(torch.finfo(q.dtype).tiny)  # (B, M): q outside S^m
    r = (targets + q * ((dustbin / mass) @ rest)) / terms
    return q - r


def combine(log_pg: Tensor, specialist_logp: Sequence[Tensor], members: Sequence[Tensor],
            active: Tensor, *, steps: int = 100, lr: float = 0.3,
            betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Tensor:
    """``log q*`` ``(B, K)``: the minimiser of :func:`combination_objective`, by ``steps``
    Adam steps of size ``lr`` on the logits ``z`` of ``q = softmax(z)`` from ``log p^g``
    (the gradient in closed form: :func:`combination_gradient`)."""
    log_pg = log_pg.detach().float()
    if steps == 0 or not bool(active.any()):
        return log_pg
    a = active.float()
    targets = log_pg.exp()
    rest = torch.ones(len(members), log_pg.shape[-1], device=log_pg.device)
    dustbin = torch.zeros_like(a)
    for m, (logp, member) in enumerate(zip(specialist_logp, members, strict=True)):
        p = logp.detach().float().exp() * a[:, m:m + 1]
        targets[:, member] += p[:, :-1]
        dustbin[:, m] = p[:, -1]
        rest[m, member] = 0.0
    terms = 1.0 + a.sum(1, keepdim=True)
    served = (terms > 1.0).float()  # a sample without active specialists keeps q = p^g
    z = log_pg.clone()
    first, second = torch.zeros_like(z), torch.zeros_like(z)
    b1, b2 = betas
    with torch.autocast(z.device.type, enabled=False):  # float32 under a bf16 evaluation
        for t in range(1, steps + 1):
            g = combination_gradient(z, targets, dustbin, rest, terms) * served
            first.mul_(b1).add_(g, alpha=1 - b1)
            second.mul_(b2).addcmul_(g, g, value=1 - b2)
            z -= lr * (first / (1 - b1 ** t)) / ((second / (1 - b2 ** t)).sqrt() + eps)
    return F.log_softmax(z, -1)


class SpecialistEnsemble(Teacher):
    """A generalist and specialists combined per sample as in sec. 5.3 (module docstring).

    Returns ``Outputs(log q*)``, so ``softmax(logits) == q*``; usable as a distiller's
    teacher and by :func:`kdforge.engine.metrics.evaluate`. Specialists run only on the
    samples that activate them.

    Args:
        generalist: the full model (a ``Teacher`` or a plain module), ``(B, K)`` logits.
        specialists: one model per subset, ``(B, |S^m| + 1)`` logits (dustbin last).
        clusters: the subsets ``S^m`` (class indices of the generalist, in the order of the
            specialist's classes).
        top_n: the ``n`` most probable generalist classes that choose the specialists.
        steps, lr: the gradient descent on the logits of ``q``.
        dustbin_shifts: added to each specialist's dustbin logit (default 0).
    """

    def __init__(self, generalist: nn.Module, specialists: Sequence[nn.Module],
                 clusters: Sequence[Sequence[int]], *, num_classes: int, top_n: int = 1,
                 steps: int = 100, lr: float = 0.3,
                 dustbin_shifts: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(specialists) != len(clusters):
            raise ConfigError(f"{len(specialists)} specialists for {len(clusters)} class "
                              "subsets; give one specialist per subset")
        if not 1 <= top_n <= num_classes:
            raise ConfigError(f"top_n must be in 1..{num_classes} (the classes), got {top_n}")
        check_clusters(clusters, num_classes)
        shifts = list(dustbin_shifts) if dustbin_shifts is not None else [0.0] * len(clusters)
        if len(shifts) != len(clusters):
            raise ConfigError(f"{len(shifts)} dustbin shifts for {len(clusters)} specialists")
        self.generalist = _as_teacher(generalist)
        self.specialists = nn.ModuleList(_as_teacher(s) for s in specialists)
        self.clusters = [[int(c) for c in subset] for subset in clusters]
        self.num_classes, self.top_n, self.steps, self.lr = num_classes, top_n, steps, lr
        self.shifts = shifts
        membership = torch.zeros(len(clusters), num_classes)
        for m, subset in enumerate(self.clusters):
            membership[m, subset] = 1.0
        self.register_buffer("membership", membership, persistent=False)

    def require_features(self, names) -> None:
        names = list(names)
        if names:
            raise ConfigError(f"the generalist + specialists teacher gives combined "
                              f"probabilities only, no features {names}; distil it with "
                              "response losses such as {name: kd, T: 4}")

    def active(self, log_pg: Tensor) -> Tensor:
        """``(B, M)`` bool: specialist ``m`` is active for sample ``b`` (its subset meets
        the generalist's ``top_n`` classes)."""
        top = log_pg.topk(self.top_n, -1).indices
        chosen = torch.zeros_like(log_pg).scatter_(1, top, 1.0)
        return (chosen @ self.membership.to(chosen.dtype).T) > 0

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        with torch.no_grad():
            log_pg = F.log_softmax(self.generalist(inputs, batch).logits.float(), -1)
            active = self.active(log_pg)
            logps, members = [], []
            for m, specialist in enumerate(self.specialists):
                size = len(self.clusters[m]) + 1
                logp = log_pg.new_zeros(log_pg.shape[0], size)
                rows = active[:, m].nonzero().reshape(-1)
                if rows.numel():
                    logits = specialist(inputs[rows], None).logits.float()
                    if logits.shape[-1] != size:
                        raise ConfigError(
                            f"specialist {m + 1} predicts {logits.shape[-1]} classes; its "
                            f"subset {self.clusters[m]} needs {size} (the subset + dustbin)")
                    logits[:, -1] += self.shifts[m]
                    logp[rows] = F.log_softmax(logits, -1)
                logps.append(logp)
                members.append(torch.as_tensor(self.clusters[m], device=log_pg.device))
        return Outputs(combine(log_pg, logps, members, active, steps=self.steps, lr=self.lr))


def _as_teacher(model: nn.Module) -> Teacher:
    return model if isinstance(model, Teacher) else ModuleTeacher(model)


__all__ = ["SpecialistEnsemble", "check_clusters", "cluster_classes", "combination_gradient",
           "combination_objective", "combine", "dustbin_shifts", "enforce_min_size", "kmeans",
           "mapped_log_q", "prediction_covariance"]
