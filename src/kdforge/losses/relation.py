"""Relation knowledge: terms on the relations among samples (or among channels) of a layer.

Each term compares a structure computed *within* one side (a batch similarity matrix, the
distances and angles among samples, a channel correlation matrix) with the same structure of
the other side, so most of them need no adapter between different widths. Features of any
rank are flattened per sample (:func:`~kdforge.losses.adapters.as_embedding`) unless the
paper works on feature maps (FSP, ICKD).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import Regressor, as_embedding, describe, match_spatial
from kdforge.losses.base import LayerPairTerm, layer_pairs, layers_repr, register_loss, sum_terms


def _float32(x: Tensor) -> torch.autocast:
    """A context that turns autocast off: the Gram matrices, distances and kernels here
    lose too much to cancellation in bf16/fp16, so they are computed in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class _LayerPairTerm(LayerPairTerm):
    """Plumbing shared by the relation terms: layer options, feature pairs, batch checks."""

    def _init_layers(self, student_layers: list[str], teacher_layers: list[str]) -> None:
        self.student_layers = student_layers
        self.teacher_layers = teacher_layers

    def _feature_pairs(self, student: Outputs, teacher: Outputs | None) -> list[tuple[Tensor, Tensor]]:
        return list(zip(*self.layer_features(student, teacher), strict=True))

    def _check_batch(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        for (fs, ft), s_name, t_name in zip(pairs, self.student_layers, self.teacher_layers,
                                            strict=True):
            if fs.shape[0] != ft.shape[0]:
                raise ShapeMismatchError(
                    f"{self.name}: student feature {s_name!r} {describe(fs.shape)} and teacher "
                    f"feature {t_name!r} {describe(ft.shape)} have different batch sizes; "
                    "both sides must see the same samples"
                )
            if fs.shape[0] < 2:
                raise ShapeMismatchError(
                    f"{self.name}: relations among samples need a batch of at least 2, got "
                    f"student feature {describe(fs.shape)} and teacher feature "
                    f"{describe(ft.shape)}"
                )

    def _layers_repr(self) -> str:
        if len(self.student_layers) == 1:
            return (f"student_layer={self.student_layers[0]!r}, "
                    f"teacher_layer={self.teacher_layers[0]!r}")
        return layers_repr(self.student_layers, self.teacher_layers)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, {self._layers_repr()}"


# -- SP ----------------------------------------------------------------------------------------

def _similarity_matrix(f: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, B)``: ``F F^T`` of the flattened features, rows L2-normalised."""
    e = as_embedding(f).float()
    return F.normalize(e @ e.t(), p=2, dim=1)


@register_loss("sp", source='Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (ICCV)')
class SP(_LayerPairTerm):
    """Similarity-preserving KD: match the batch's sample-similarity matrices.

    Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (ICCV). For a layer
    pair with features ``F_s`` ``(B, ...)`` and ``F_t`` ``(B, ...)`` flattened to ``(B, D_s)``
    and ``(B, D_t)``: ``G = row_l2_normalise(F F^T)`` ``(B, B)`` on each side and

    ``L = sum over layer pairs of 1/B^2 * ||G_s - G_t||_F^2``.

    Widths need not match (both ``G`` are ``B x B``), so there is no adapter. Options:
    ``student_layer``/``teacher_layer``, or lists ``student_layers``/``teacher_layers``
    (pairs compared in order, losses summed). The paper's default weight (gamma) is 3000,
    as in the CRD paper's CIFAR-100 benchmark, which reads the last feature map of each
    side (before pooling).
    """

    def __init__(self, weight: float = 3000.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, student_layers: list[str] | None = None,
                 teacher_layers: list[str] | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("sp", student_layer, teacher_layer, student_layers,
                                          teacher_layers, lists="either"))

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._check_batch(self._feature_pairs(student, teacher))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        values = []
        for fs, ft in self._feature_pairs(student, teacher):
            b = fs.shape[0]
            with _float32(fs):
                value = (_similarity_matrix(fs) - _similarity_matrix(ft)).pow(2).sum() / b**2
            values.append(value)
        return sum_terms(values)


# -- RKD ---------------------------------------------------------------------------------------

def _distances_and_gram(e: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Pairwise Euclidean distances ``(B, B)`` (zero diagonal) and the Gram matrix of ``e``.

    ``e`` is centred first: distances and angles do not change, and the Gram matrix loses
    less precision to cancellation.
    """
    e = e - e.mean(dim=0, keepdim=True)
    gram = e @ e.t()
    sq = gram.diagonal()
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    d2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(eps)
    return d2.sqrt() * off_diagonal, gram


def _angles(distances: Tensor, gram: Tensor) -> Tensor:
    """``(B, B, B)``: cosine of the angle at apex ``i`` between ``e_j - e_i`` and ``e_k - e_i``.

    From the Gram matrix: ``<e_j - e_i, e_k - e_i> = G_jk - G_ij - G_ik + G_ii``. Entries with
    ``j == i`` or ``k == i`` (no angle) are 0, as a normalised zero vector gives.
    """
    b = gram.shape[0]
    diag = gram.diagonal()
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=gram.device)
    valid = off_diagonal[:, :, None] & off_diagonal[:, None, :]
    denom = distances[:, :, None] * distances[:, None, :]
    denom = torch.where(valid, denom, torch.ones_like(denom))
    return torch.where(valid, inner / denom, torch.zeros_like(inner))


@register_loss("rkd", source='Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation" (CVPR)')
class RKD(_LayerPairTerm):
    """Relational KD: match the distances and angles among the batch's embeddings.

    Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation" (CVPR). With the features
    flattened to embeddings ``e`` ``(B, D)`` on each side:

    - distance-wise: ``psi_D(i, j) = ||e_i - e_j|| / mu``, ``mu`` the mean distance over the
      ``B (B - 1)`` off-diagonal pairs; ``L_D = mean_{i,j} huber(psi_D^s, psi_D^t)``;
    - angle-wise: ``psi_A(i, j, k) = cos angle(e_j - e_i, e_k - e_i)`` (apex ``i``);
      ``L_A = mean_{i,j,k} huber(psi_A^s, psi_A^t)``;
    - ``L = w_dist * L_D + w_angle * L_A``,

    with ``huber`` the smooth-L1 loss (``delta = 1``). The means run over all ``B^2`` pairs
    and ``B^3`` triplets (degenerate ones are 0 on both sides), as in the authors' and the
    CRD benchmark's code, so that the paper's ``w_dist = 25`` and ``w_angle = 50`` keep their
    scale. Both ``psi`` are invariant to scaling an embedding, so widths need not match and
    a student that equals the teacher up to a scale factor gets 0. Setting ``w_dist`` or
    ``w_angle`` to 0 gives RKD-A or RKD-D alone. The CRD benchmark reads the penultimate
    (pooled) embedding with term weight 1. Distances come from the Gram matrix, so memory
    is ``O(B^3)`` for the angles, not ``O(B^2 D)``.
    """

    def __init__(self, weight: float = 1.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, w_dist: float = 25.0,
                 w_angle: float = 50.0) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("rkd", student_layer, teacher_layer, None, None,
                                          lists="no"))
        if not (w_dist >= 0 and w_angle >= 0) or w_dist + w_angle == 0:
            raise ConfigError(
                f"rkd: w_dist and w_angle must be >= 0 and not both 0, got {w_dist}, {w_angle}"
            )
        self.w_dist, self.w_angle = float(w_dist), float(w_angle)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._check_batch(self._feature_pairs(student, teacher))

    def relations(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised distances ``(B, B)`` and angle cosines ``(B, B, B)`` of features ``f``."""
        e = as_embedding(f).float()
        b = e.shape[0]
        distances, gram = _distances_and_gram(e)
        mean = (distances.sum() / (b * (b - 1))).clamp_min(1e-12)
        angles = _angles(distances, gram) if self.w_angle > 0 else distances.new_zeros(())
        return distances / mean, angles

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        ((fs, ft),) = self._feature_pairs(student, teacher)
        with _float32(fs):
            d_s, a_s = self.relations(fs)
            d_t, a_t = self.relations(ft)
            loss = d_s.new_zeros(())
            if self.w_dist > 0:
                loss = loss + self.w_dist * F.smooth_l1_loss(d_s, d_t)
            if self.w_angle > 0:
                loss = loss + self.w_angle * F.smooth_l1_loss(a_s, a_t)
        return loss

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, {self._layers_repr()}, w_dist={self.w_dist:g}, "
                f"w_angle={self.w_angle:g}")


# -- PKT ---------------------------------------------------------------------------------------

def _cosine_conditional(f: Tensor, eps: float) -> Tensor:
    """``(B, B)``: ``p_{j|i}`` from the cosine kernel ``(cos + 1) / 2``, rows summing to 1."""
    e = as_embedding(f).float()
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss("pkt", source='Passalis & Tefas 2018, "Learning Deep Representations with '
                             'Probabilistic Knowledge Transfer" (ECCV)')
class PKT(_LayerPairTerm):
    """Probabilistic knowledge transfer: match the batch's cosine-kernel neighbour distributions.

    Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
    Transfer" (ECCV). With the features flattened to ``(B, D)`` and L2-normalised
    (``x / (||x|| + eps)``), the cosine kernel ``K_ij = (cos(x_i, x_j) + 1) / 2`` is turned
    into conditional probabilities ``p_{j|i} = K_ij / sum_k K_ik`` on each side, and

    ``L = 1/B^2 sum_i sum_j p^t_{j|i} log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))``,

    i.e. ``KL(teacher || student)`` of every row, averaged over the ``B^2`` entries
    (``eps = 1e-7``). The paper writes the plain double sum; the ``1/B^2`` is the CRD
    benchmark's (and the authors' PyTorch code's) normalisation, for which its weight
    30000 was chosen. Self-pairs ``j = i`` are kept as in that code. Widths need not match.
    The CRD benchmark reads the penultimate (pooled) embedding.
    """

    def __init__(self, weight: float = 30000.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, eps: float = 1e-7) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("pkt", student_layer, teacher_layer, None, None,
                                          lists="no"))
        if not eps > 0:
            raise ConfigError(f"pkt: eps must be > 0, got {eps}")
        self.eps = float(eps)

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._check_batch(self._feature_pairs(student, teacher))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        ((fs, ft),) = self._feature_pairs(student, teacher)
        with _float32(fs):
            p_s = _cosine_conditional(fs, self.eps)
            p_t = _cosine_conditional(ft, self.eps)
            return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


# -- CC ----------------------------------------------------------------------------------------

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


# -- FSP ---------------------------------------------------------------------------------------

def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """The FSP ("flow of solution procedure") matrix of two feature maps of one network.

    ``a`` ``(B, C_a, *S_a)``, ``b`` ``(B, C_b, *S_b)`` -> ``(B, C_a, C_b)``:
    ``G[c, d] = 1/N sum_n a[c, n] b[d, n]`` over the ``N`` spatial positions, after average-
    pooling the larger map to the smaller spatial size (per dimension).
    """
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:], strict=True))
    a = match_spatial(a.float(), size).flatten(2)
    b = match_spatial(b.float(), size).flatten(2)
    return torch.einsum("bcn,bdn->bcd", a, b) / a.shape[2]


@register_loss("fsp", source='Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation: Fast '
                             'Optimization, Network Minimization and Transfer Learning" (CVPR)')
class FSP(_LayerPairTerm):
    """FSP: match the Gram ("flow") matrices between consecutive feature maps.

    Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning" (CVPR). For consecutive layers ``(i, i+1)``
    of ``student_layers`` (and likewise of ``teacher_layers``), with maps ``F_i``
    ``(B, C_i, h, w)`` (or ``(B, C_i, L)``), the FSP matrix is
    ``G = F_i^T F_{i+1} / (h w)`` ``(B, C_i, C_{i+1})`` (spatial sizes matched by adaptive
    average pooling to the smaller; :func:`fsp_matrix`) and

    ``L = mean over the pairs of mean_{b, c, d} (G_s - G_t)^2``.

    There is no adapter: the ``k``-th student layer must have the channel count of the
    ``k``-th teacher layer (``ShapeMismatchError`` otherwise); spatial sizes may differ
    between the sides. The paper's students are shallower networks of the teacher's widths
    (e.g. the ends of each ResNet stage).

    The paper trains in two stages: first the student's layers minimise the FSP loss alone,
    then the student trains on its task loss. In kdforge that is a weight schedule: this
    term with ``stop_epoch: E`` and ``ce`` (and ``kd``, if used) with ``start_epoch: E``
    (``configs/methods/fsp.yaml``). The CRD benchmark uses that init stage (30 of 240 epochs)
    and FSP weight 0 afterwards; the weight during the init stage is 1 (the default).
    """

    def __init__(self, weight: float = 1.0, student_layers: list[str] | None = None,
                 teacher_layers: list[str] | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("fsp", None, None, student_layers, teacher_layers,
                                          lists="yes"))
        if len(self.student_layers) < 2:
            raise ConfigError(
                "fsp: an FSP matrix relates two layers; give at least 2 student_layers and "
                f"teacher_layers (consecutive ones are paired), got {self.student_layers}"
            )

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        pairs = self._feature_pairs(student, teacher)
        for (fs, ft), s_name, t_name in zip(pairs, self.student_layers, self.teacher_layers,
                                            strict=True):
            s, t = describe(fs.shape), describe(ft.shape)
            if fs.dim() not in (3, 4) or ft.dim() not in (3, 4):
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} and teacher feature {t_name!r} {t}: "
                    "FSP needs feature maps (B, C, L) or (B, C, H, W); pick convolutional layers"
                )
            if fs.shape[0] != ft.shape[0]:
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} and teacher feature {t_name!r} {t} "
                    "have different batch sizes"
                )
            if fs.shape[1] != ft.shape[1]:
                raise ShapeMismatchError(
                    f"fsp: student feature {s_name!r} {s} has {fs.shape[1]} channels but "
                    f"teacher feature {t_name!r} {t} has {ft.shape[1]}; FSP compares "
                    "channel-by-channel matrices and has no adapter: pair layers of equal "
                    "widths (a student with the teacher's widths, as in the paper)"
                )
        for feats, names, side in (([p[0] for p in pairs], self.student_layers, "student"),
                                   ([p[1] for p in pairs], self.teacher_layers, "teacher")):
            for i in range(len(feats) - 1):
                a, b, na, nb = feats[i], feats[i + 1], names[i], names[i + 1]
                if a.dim() != b.dim():
                    raise ShapeMismatchError(
                        f"fsp: {side} features {na!r} {describe(a.shape)} and {nb!r} "
                        f"{describe(b.shape)} have different ranks; pair maps of one kind"
                    )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        pairs = self._feature_pairs(student, teacher)
        fs = [p[0] for p in pairs]
        ft = [p[1] for p in pairs]
        with _float32(fs[0]):
            losses = [(fsp_matrix(fs[i], fs[i + 1]) - fsp_matrix(ft[i], ft[i + 1])).pow(2).mean()
                      for i in range(len(pairs) - 1)]
            return torch.stack(losses).mean()


# -- ICKD --------------------------------------------------------------------------------------

def _channel_correlation(f: Tensor) -> Tensor:
    """``(B, C, *S)`` -> ``(B, C, C)``: ``F F^T`` over the positions, rows L2-normalised."""
    f = f.float().flatten(2)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), p=2, dim=2)


@register_loss("ickd", source='Liu et al. 2021, "Exploring Inter-Channel Correlation for '
                              'Diversity-Preserved Knowledge Distillation" (ICCV)')
class ICKD(_LayerPairTerm):
    """Inter-channel correlation KD: match each sample's channel-by-channel correlation.

    Liu, Huang, Lin, Xie, Wang, Chang & Liang 2021, "Exploring Inter-Channel Correlation
    for Diversity-Preserved Knowledge Distillation" (ICCV). The student's map ``(B, C_s,
    *S)`` first goes through a learned ``1x1`` convolution + BatchNorm to the teacher's
    ``C_t`` channels (built in :meth:`setup`, always, as in the authors' code; spatial
    sizes are matched to the teacher's). Per sample, with ``F`` ``(C, N)`` over the ``N``
    positions, ``G = row_l2_normalise(F F^T)`` ``(C, C)`` on each side, and

    ``L = 1/(B C) * sum_b ||G_s(b) - G_t(b)||_F^2``.

    The row normalisation and the ``1/(B C)`` are those of the authors' CIFAR-100 code
    (ICKD-C), for which its weight 2.5 (beside CE weight 1, without KD) was chosen; that is
    the default. They read the last feature map (before pooling). A ``(B, D)`` feature is
    taken as ``D`` channels at a single position (a degenerate but defined case: ``G`` is
    then the normalised outer product ``f f^T``).
    """

    def __init__(self, weight: float = 2.5, student_layer: str | None = None,
                 teacher_layer: str | None = None) -> None:
        super().__init__(weight)
        self._init_layers(*layer_pairs("ickd", student_layer, teacher_layer, None, None,
                                          lists="no"))
        self.adapter: Regressor | None = None

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        pairs = self._feature_pairs(student, teacher)
        self._check_batch(pairs)
        ((fs, ft),) = pairs
        s, t = describe(fs.shape), describe(ft.shape)
        if fs.dim() != ft.dim() or fs.dim() not in (2, 3, 4):
            raise ShapeMismatchError(
                f"ickd: student feature {self.student_layers[0]!r} {s} and teacher feature "
                f"{self.teacher_layers[0]!r} {t} must both be (B, C, H, W), (B, C, L) or "
                "(B, C); pick layers of the same kind on both sides"
            )
        if self.adapter is None:
            self.adapter = Regressor.for_shapes(self.name, tuple(fs.shape), tuple(ft.shape)
                                                ).to(fs.device)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        if self.adapter is None:
            raise ConfigError(
                "ickd: its 1x1 adapter is built from the first batch's shapes; run setup() "
                "(Distiller.prepare does) before computing the loss"
            )
        ((fs, ft),) = self._feature_pairs(student, teacher)
        fs = self.adapter(fs.float())
        if fs.dim() == 2:
            fs, ft = fs[:, :, None], ft[:, :, None]
        b, c = ft.shape[0], ft.shape[1]
        with _float32(fs):
            diff = _channel_correlation(fs) - _channel_correlation(ft)
            return diff.pow(2).sum() / (b * c)


__all__ = ["CC", "FSP", "ICKD", "PKT", "RKD", "SP", "fsp_matrix"]
