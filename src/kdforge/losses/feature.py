"""Feature knowledge: terms that compare intermediate features of the student and the teacher.

Every term names its layers (module paths as in ``model.named_modules()``; ``"path@input"``
takes a module's input, e.g. a pre-activation) and works on feature maps ``(B, C, L)`` or
``(B, C, H, W)``; where a method makes sense on vectors ``(B, D)`` too (FitNets, FT, VID,
AB), a vector is treated as a map with one position. Terms with learnable adapters build
them in :meth:`~kdforge.losses.base.LossTerm.setup` from the first batch's shapes, on the
features' device, before the optimizer exists.

The defaults are the papers'; the default weights are those of the CRD paper's CIFAR-100
benchmark (Tian et al. 2020, repository HobbitLong/RepDistiller) where it has the method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import Regressor, describe, match_spatial
from kdforge.losses.base import (
    LayerPairTerm,
    LossTerm,
    layer_pairs,
    layers_repr,
    read_features,
    register_loss,
    sum_terms,
)

# -- shared helpers ------------------------------------------------------------------------------


def _single_layer(term: str, student_layer: str | None, teacher_layer: str | None
                  ) -> tuple[str, str]:
    s, t = layer_pairs(term, student_layer, teacher_layer, lists="no")
    return s[0], t[0]


def _layer_lists(term: str, student_layers: Sequence[str] | str | None,
                 teacher_layers: Sequence[str] | str | None,
                 student_layer: str | None = None, teacher_layer: str | None = None
                 ) -> tuple[list[str], list[str]]:
    """Both sides' layer names as two lists of the same length (one pair per position)."""
    return layer_pairs(term, student_layer, teacher_layer, student_layers, teacher_layers)


def _check_pair(term: str, s_name: str, s: Tensor, t_name: str, t: Tensor, *,
                vectors: bool, why: str = "") -> None:
    """Raise ``ShapeMismatchError`` (naming both layers and shapes) unless the two features
    are of one kind: both maps of the same rank, or (where ``vectors``) both ``(B, D)``."""
    ranks = (2, 3, 4) if vectors else (3, 4)
    kinds = ("(B, D), (B, C, L) or (B, C, H, W)" if vectors
             else "feature maps (B, C, L) or (B, C, H, W)")
    where = (f"{term}: student layer {s_name!r} gives {describe(tuple(s.shape))} and teacher "
             f"layer {t_name!r} gives {describe(tuple(t.shape))}")
    if s.dim() not in ranks or t.dim() not in ranks:
        raise ShapeMismatchError(
            f"{where}; this term needs {kinds} on both sides{why}: pick layers of that kind"
        )
    if s.dim() != t.dim():
        raise ShapeMismatchError(
            f"{where}; they are of different kinds (ranks {s.dim()} and {t.dim()}): pick "
            "layers of the same kind on both sides (both maps of the same rank"
            + (", or both vectors)" if vectors else ")")
        )
    if s.shape[0] != t.shape[0]:
        raise ShapeMismatchError(f"{where}; the batch sizes differ")


def _as_map(x: Tensor) -> Tensor:
    """``(B, D)`` -> ``(B, D, 1)`` (a map with one position); maps unchanged."""
    return x.unsqueeze(-1) if x.dim() == 2 else x


def _conv(rank: int, c_in: int, c_out: int, kernel_size: int = 1, bias: bool = True) -> nn.Module:
    """A stride-1, size-preserving convolution for maps of ``rank`` 3 (1-D) or 4 (2-D)."""
    conv = nn.Conv2d if rank == 4 else nn.Conv1d
    return conv(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=bias)


def _conv_transpose(rank: int, c_in: int, c_out: int) -> nn.Module:
    conv = nn.ConvTranspose2d if rank == 4 else nn.ConvTranspose1d
    return conv(c_in, c_out, 3, padding=1)


def _batchnorm(rank: int, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if rank == 4 else nn.BatchNorm1d(c)


def _assert_built(term: str, module: nn.Module | None) -> None:
    if module is None:
        raise ConfigError(
            f"{term}: its adapters are built by setup() from a first batch; use the term "
            "through a Distiller (which calls setup in prepare()) or call "
            "term.setup(student_outputs, teacher_outputs, batch) first"
        )


# -- FitNets -------------------------------------------------------------------------------------


@register_loss("fitnet", source='Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR)')
class FitNet(LossTerm):
    """FitNets hint loss: MSE between a regressed student layer and a teacher layer.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin Deep
    Nets" (ICLR). The teacher's *hint* layer guides the student's *guided* layer through a
    learned regressor ``r`` (:class:`~kdforge.losses.adapters.Regressor`: a ``k x k``
    convolution + BatchNorm for maps, after matching the spatial size to the teacher's; a
    linear layer + BatchNorm for vectors):

    ``L = 1/N sum (r(F_s) - F_t)^2``, the mean over all ``N = B * C_t * positions`` elements.

    Shapes: ``F_s`` ``(B, C_s, *S_s)``, ``F_t`` ``(B, C_t, *S_t)`` with the same rank (maps
    ``(B, C, L)`` / ``(B, C, H, W)``, or vectors ``(B, D)``). The regressor is built in
    :meth:`setup`. The paper trains in two stages (hint, then KD); the CRD benchmark, as
    here, adds the hint loss to the cross-entropy with weight 100 in a single stage.
    """

    def __init__(self, weight: float = 100.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, kernel_size: int = 1) -> None:
        super().__init__(weight)
        self.student_layer, self.teacher_layer = _single_layer(
            self.name, student_layer, teacher_layer)
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise ConfigError(f"fitnet: kernel_size must be an odd integer >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.regressor: Regressor | None = None

    def student_features(self) -> list[str]:
        return [self.student_layer]

    def teacher_features(self) -> list[str]:
        return [self.teacher_layer]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        _check_pair(self.name, self.student_layer, s, self.teacher_layer, t, vectors=True)
        if self.regressor is None:
            self.regressor = Regressor.for_shapes(
                self.name, s.shape, t.shape, kernel_size=self.kernel_size).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.regressor)
        assert self.regressor is not None
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        return F.mse_loss(self.regressor(s.float()).float(), t.float())

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, student_layer={self.student_layer!r}, "
                f"teacher_layer={self.teacher_layer!r}, kernel_size={self.kernel_size}")


# -- Attention transfer --------------------------------------------------------------------------


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: ``(B, C, *S) -> (B, prod(S))``,
    ``Q = mean_c |F_c|^p`` flattened, divided by its L2 norm."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


@register_loss("at", source='Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR)')
class AT(LayerPairTerm):
    """Attention transfer: match the L2-normalised spatial attention maps of layer pairs.

    Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer" (ICLR). For each
    pair ``j`` the attention map is ``Q = vec(mean_c |F_c|^p) / ||vec(mean_c |F_c|^p)||_2``
    (``p = 2``) and

    ``L = sum_j 1/(B * P_j) sum_b ||Q_s,b^j - Q_t,b^j||_2^2``,

    i.e. per pair the mean over the batch and the ``P_j`` positions of the squared
    difference, as the authors' code and the CRD repository compute it
    (``(Q_s - Q_t).pow(2).mean()``); the pairs are summed. The paper writes the objective as
    ``CE + beta/2 * sum_j ||.||``, with ``beta = 1000`` and that per-element normalisation,
    so the paper's coefficient on this value is 500; the CRD benchmark uses weight 1000
    (the default here).

    Shapes: ``(B, C, L)`` or ``(B, C, H, W)`` per side (same rank); channels may differ; the
    student map is resized to the teacher's positions (average pooling when shrinking,
    interpolation when growing; the CRD code pools the larger side down instead).
    """

    def __init__(self, weight: float = 1000.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, p: float = 2.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if not p > 0:
            raise ConfigError(f"at: p must be > 0, got {p}")
        self.p = float(p)

    def _pairs(self, student: Outputs, teacher: Outputs | None) -> list[tuple[Tensor, Tensor]]:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=False,
                        why=" (attention is a map over positions; a vector (B, D) has none)")
        return list(zip(ss, ts, strict=True))

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._pairs(student, teacher)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        values = []
        for s, t in self._pairs(student, teacher):
            s = match_spatial(s.float(), tuple(t.shape[2:]))
            value = (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, p={self.p:g}, student_layers={self.student_layers}, "
                f"teacher_layers={self.teacher_layers}")


# -- Neuron selectivity transfer -----------------------------------------------------------------


@register_loss("nst", source='Huang & Wang 2017, "Like What You Like: Knowledge Distill via '
                             'Neuron Selectivity Transfer" (arXiv:1707.01219)')
class NST(LayerPairTerm):
    """Neuron selectivity transfer: squared MMD between the channels' activation patterns.

    Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer". Each channel's map, flattened over the ``P`` positions and L2-normalised, is
    one sample ``f^i`` in ``R^P``; per sample ``b`` the student's ``C_s`` and the teacher's
    ``C_t`` channels are two sample sets, compared by the squared maximum mean discrepancy
    with the polynomial kernel ``k(x, y) = (x^T y + c)^d`` (``d = 2``, ``c = 0``):

    ``MMD^2 = 1/C_t^2 sum_{i,i'} k(t^i, t^i') + 1/C_s^2 sum_{j,j'} k(s^j, s^j')
    - 2/(C_s C_t) sum_{i,j} k(s^j, t^i)``,

    averaged over the batch and summed over layer pairs. The paper's objective is
    ``CE + lambda/2 * MMD^2``; the default weight 50 is the CRD benchmark's coefficient on
    ``MMD^2`` itself (as in the CRD code, which also keeps the teacher-teacher term).

    Shapes: ``(B, C, L)`` or ``(B, C, H, W)`` (same rank; channels may differ); the student
    map is resized to the teacher's positions. Vectors ``(B, D)`` have no positions and are
    refused (each normalised "pattern" would be a sign).
    """

    def __init__(self, weight: float = 50.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, degree: int = 2, c: float = 0.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if not (isinstance(degree, int) and degree >= 1):
            raise ConfigError(f"nst: degree must be an integer >= 1, got {degree}")
        if not c >= 0:
            raise ConfigError(f"nst: c must be >= 0, got {c}")
        self.degree = degree
        self.c = float(c)

    def _pairs(self, student: Outputs, teacher: Outputs | None) -> list[tuple[Tensor, Tensor]]:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=False,
                        why=" (it compares each channel's pattern over the positions; a vector "
                            "(B, D) has none)")
        return list(zip(ss, ts, strict=True))

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        self._pairs(student, teacher)

    def _kernel_mean(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean of ``k(a_i, b_j)`` over the batch and all channel pairs; ``a``, ``b``
        ``(B, C, P)``."""
        return (torch.bmm(a, b.transpose(1, 2)) + self.c).pow(self.degree).mean()

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        values = []
        for s, t in self._pairs(student, teacher):
            s = match_spatial(s.float(), tuple(t.shape[2:]))
            fs = F.normalize(s.flatten(2), dim=2)
            ft = F.normalize(t.float().flatten(2), dim=2)
            with torch.autocast(fs.device.type, enabled=False):  # the kernel in float32
                value = (self._kernel_mean(ft, ft) + self._kernel_mean(fs, fs)
                         - 2 * self._kernel_mean(fs, ft))
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, degree={self.degree}, c={self.c:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")


# -- Factor transfer -----------------------------------------------------------------------------


class Paraphraser(nn.Module):
    """Factor transfer's paraphraser: a convolutional auto-encoder of a teacher feature.

    Encoder: three ``3``-wide convolutions ``C -> C -> kC -> kC`` with LeakyReLU(0.1);
    decoder: three transposed convolutions ``kC -> kC -> C -> C`` with LeakyReLU(0.1), as
    the authors' code (no BatchNorm, as the CRD benchmark's). ``rank`` 3 (1-D) or 4 (2-D).
    """

    def __init__(self, channels: int, factor_channels: int, rank: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(
            _conv(rank, c, c, 3), nn.LeakyReLU(0.1),
            _conv(rank, c, k, 3), nn.LeakyReLU(0.1),
            _conv(rank, k, k, 3), nn.LeakyReLU(0.1),
        )
        self.decoder = nn.Sequential(
            _conv_transpose(rank, k, k), nn.LeakyReLU(0.1),
            _conv_transpose(rank, k, c), nn.LeakyReLU(0.1),
            _conv_transpose(rank, c, c), nn.LeakyReLU(0.1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decoder(encoder(x))``."""
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """Factor transfer's translator: the student's encoder ``C_s -> C_s -> kC_t -> kC_t``
    (``3``-wide convolutions, BatchNorm and LeakyReLU(0.1), as the CRD benchmark's)."""

    def __init__(self, channels: int, factor_channels: int, rank: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(
            _conv(rank, c, c, 3), _batchnorm(rank, c), nn.LeakyReLU(0.1),
            _conv(rank, c, k, 3), _batchnorm(rank, k), nn.LeakyReLU(0.1),
            _conv(rank, k, k, 3), _batchnorm(rank, k), nn.LeakyReLU(0.1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@register_loss("ft", source='Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network '
                            'Compression via Factor Transfer" (NeurIPS)')
class FT(LossTerm):
    """Factor transfer: match the student's translated factor to the teacher's paraphrased one.

    Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network Compression via Factor
    Transfer" (NeurIPS). A :class:`Paraphraser` (rate ``k = 0.5``: ``round(k * C_t)`` factor
    channels) is first fitted to reconstruct the teacher feature (L2 reconstruction loss,
    :meth:`pretrain`, ``pretrain_epochs`` epochs with Adam at ``pretrain_lr``), then frozen;
    its encoder gives the teacher factor ``F_t``. A :class:`Translator` on the student's
    feature (resized to the teacher's positions) gives ``F_s`` and trains with the student:

    ``L = 1/(B D) sum_b || F_s,b/||F_s,b||_2 - F_t,b/||F_t,b||_2 ||_p^p``  (``p = 1``),

    factors flattened per sample to ``D`` values. The paper writes the ``p``-norm per
    sample; the authors' code (``nn.L1Loss``) averages over the ``B * D`` elements, the
    normalisation used here and the one the CRD weight 200 was tuned with (the CRD code
    itself compares channel-pooled maps of the factors instead; here the whole factor, as
    in the paper). The CRD benchmark fits the paraphraser for 30 epochs on CIFAR-100 (SGD,
    lr 0.01); the default here is 10 epochs of Adam for small data sets.

    Shapes: maps ``(B, C, L)`` / ``(B, C, H, W)`` or vectors ``(B, D)`` (as maps with one
    position), the same rank on both sides.
    """

    needs_pretraining = True

    def __init__(self, weight: float = 200.0, student_layer: str | None = None,
                 teacher_layer: str | None = None, rate: float = 0.5, p: float = 1.0,
                 pretrain_epochs: int = 10, pretrain_lr: float = 1e-3) -> None:
        super().__init__(weight)
        self.student_layer, self.teacher_layer = _single_layer(
            self.name, student_layer, teacher_layer)
        if not 0 < rate <= 4:
            raise ConfigError(f"ft: rate (the paraphrase rate k) must be in (0, 4], got {rate}")
        if not p > 0:
            raise ConfigError(f"ft: p must be > 0, got {p}")
        if not (isinstance(pretrain_epochs, int) and pretrain_epochs >= 0):
            raise ConfigError(f"ft: pretrain_epochs must be an integer >= 0, got {pretrain_epochs}")
        if not pretrain_lr > 0:
            raise ConfigError(f"ft: pretrain_lr must be > 0, got {pretrain_lr}")
        self.rate = float(rate)
        self.p = float(p)
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = float(pretrain_lr)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None
        #: Mean reconstruction error per pretraining epoch (filled by :meth:`pretrain`).
        self.pretrain_history: list[float] = []
        # Saved with the term, so a resumed run knows its paraphraser was fitted.
        self.register_buffer("pretrained", torch.zeros((), dtype=torch.bool))
        self._warned = False

    def student_features(self) -> list[str]:
        return [self.student_layer]

    def teacher_features(self) -> list[str]:
        return [self.teacher_layer]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        _check_pair(self.name, self.student_layer, s, self.teacher_layer, t, vectors=True)
        if self.paraphraser is None:
            rank = _as_map(t).dim()
            factor = max(1, round(self.rate * t.shape[1]))
            self.paraphraser = Paraphraser(t.shape[1], factor, rank).to(t.device)
            # Frozen from the start: only pretrain() fits it, so it never reaches the
            # student's optimizer (nor after a resume, when pretrain() is not called).
            self.paraphraser.requires_grad_(False)
            self.translator = Translator(s.shape[1], factor, rank).to(s.device)

    def pretrain(self, teacher_outputs: Callable[[], Iterable[Outputs]]) -> None:
        """Fit the paraphraser to reconstruct the teacher feature (mean squared error) for
        ``pretrain_epochs`` passes over ``teacher_outputs()``, then freeze it."""
        _assert_built(self.name, self.paraphraser)
        assert self.paraphraser is not None
        params = list(self.paraphraser.parameters())
        self.paraphraser.requires_grad_(True)
        self.paraphraser.train()
        optimizer = torch.optim.Adam(params, lr=self.pretrain_lr)
        try:
            with torch.enable_grad():
                for _ in range(self.pretrain_epochs):
                    total, count = 0.0, 0
                    for out in teacher_outputs():
                        t = _as_map(out.feature(self.teacher_layer, "teacher")).detach().float()
                        loss = F.mse_loss(self.paraphraser(t), t)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        total += float(loss.detach()) * t.shape[0]
                        count += t.shape[0]
                    if count == 0:
                        raise ConfigError("ft: pretraining got no teacher outputs (empty data)")
                    self.pretrain_history.append(total / count)
        finally:
            self.paraphraser.requires_grad_(False)
            for param in params:
                param.grad = None
        self.pretrained.fill_(True)

    def factors(self, student: Outputs, teacher: Outputs | None) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's factors, ``(B, round(k C_t), *S_t)`` each."""
        _assert_built(self.name, self.translator)
        assert self.paraphraser is not None and self.translator is not None
        (s,), (t,) = read_features(self.name, student, teacher, [self.student_layer],
                               [self.teacher_layer])
        t = _as_map(t).float()
        s = match_spatial(_as_map(s).float(), tuple(t.shape[2:]))
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(t)
        return self.translator(s).float(), factor_t.float()

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        if not self._warned:
            self._warned = True
            if not bool(self.pretrained):
                warnings.warn(
                    "ft: the paraphraser has not been pretrained, so the teacher factor comes "
                    "from a random encoder; the trainer pretrains it, in your own loop call "
                    "distiller.pretrain_terms(batches) after distiller.prepare(batch)",
                    stacklevel=2,
                )
        factor_s, factor_t = self.factors(student, teacher)
        diff = (F.normalize(factor_s.flatten(1), dim=1)
                - F.normalize(factor_t.flatten(1), dim=1))
        return diff.abs().pow(self.p).mean()

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, rate={self.rate:g}, p={self.p:g}, "
                f"pretrain_epochs={self.pretrain_epochs}, student_layer={self.student_layer!r}, "
                f"teacher_layer={self.teacher_layer!r}")


# -- Activation boundaries -----------------------------------------------------------------------

#: The authors' code (and the CRD repository) scales the summed alternative loss by 3/1000.
AB_SCALE = 3e-3


@register_loss("ab", source='Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of '
                            'Activation Boundaries Formed by Hidden Neurons" (AAAI)')
class AB(LayerPairTerm):
    """Activation-boundary transfer: a margin loss on which side of zero each neuron lies.

    Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons" (AAAI). On *pre-activation* features (before the
    ReLU), a connector ``r`` (``1x1`` convolution + BatchNorm, student -> teacher channels,
    after resizing to the teacher's positions) maps the student; the alternative (squared
    hinge) loss with margin ``m = 1`` is, per element,

    ``l = (r + m)^2 * 1[r > -m] * 1[t <= 0] + (r - m)^2 * 1[r <= m] * 1[t > 0]``

    and ``L = 3/1000 * sum_j w_j * (1/B) sum_elements l_j``, with layer weights
    ``w_j = 2^(j - n + 1)`` (1 for the deepest of ``n`` pairs, 1/2, 1/4, ... going
    shallower): the normalisation of the authors' code and of the CRD repository.
    ``L = 0`` exactly when every connector output is beyond the margin on the teacher's side
    (``r >= m`` where ``t > 0``, ``r <= -m`` where ``t <= 0``).

    Layers must be pre-activations: in kdforge's CIFAR ResNets ``"layer2.0.relu@input"``
    (a BasicBlock ends in its ``relu`` module); in ``cnn1d`` (``blocks.i`` = Conv, BN, ReLU)
    ``"blocks.i.1"`` or ``"blocks.i.2@input"``. The paper transfers in an initialisation
    stage (AB alone), then trains with the labels; the CRD benchmark does that (30 of 240
    epochs), then weight 0. Express it with a schedule: this term with ``stop_epoch: E`` and
    ``ce`` with ``start_epoch: E``. Shapes: maps or vectors ``(B, D)``, same rank per pair.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, margin: float = 1.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if not margin >= 0:
            raise ConfigError(f"ab: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.connectors: nn.ModuleList | None = None

    @property
    def layer_weights(self) -> list[float]:
        n = len(self.student_layers)
        return [2.0 ** (j - n + 1) for j in range(n)]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=True)
            if not bool((t < 0).any()):
                warnings.warn(
                    f"ab: teacher layer {tn!r} has no negative values: activation boundaries "
                    "need pre-activation features (before the ReLU), e.g. 'blocks.1.1' in "
                    "cnn1d or 'layer2.0.relu@input' in a CIFAR ResNet",
                    stacklevel=2,
                )
        if self.connectors is None:
            connectors = []
            for s, t in zip(ss, ts, strict=True):
                rank = _as_map(t).dim()
                connectors.append(nn.Sequential(
                    _conv(rank, s.shape[1], t.shape[1], 1, bias=False), _batchnorm(rank, t.shape[1])
                ).to(s.device))
            self.connectors = nn.ModuleList(connectors)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.connectors)
        assert self.connectors is not None
        ss, ts = self.layer_features(student, teacher)
        m = self.margin
        values = []
        for w, connector, s, t in zip(self.layer_weights, self.connectors, ss, ts, strict=True):
            t = _as_map(t).float()
            r = connector(match_spatial(_as_map(s).float(), tuple(t.shape[2:]))).float()
            off = (r + m).pow(2) * ((r > -m) & (t <= 0))
            on = (r - m).pow(2) * ((r <= m) & (t > 0))
            value = w * (off + on).sum() / t.shape[0]
            values.append(value)
        return AB_SCALE * sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, margin={self.margin:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")


# -- Variational information distillation --------------------------------------------------------


class VIDHead(nn.Module):
    """VID's Gaussian for one layer pair: the mean regressor ``mu`` (``1x1`` convolution ->
    ReLU -> ``1x1`` -> ReLU -> ``1x1``, no biases) and per-channel variances
    ``sigma^2 = softplus(alpha) + eps``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, rank: int, init_var: float,
                 eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv(rank, c_in, c_mid, 1, bias=False), nn.ReLU(),
            _conv(rank, c_mid, c_mid, 1, bias=False), nn.ReLU(),
            _conv(rank, c_mid, c_out, 1, bias=False),
        )
        # softplus(alpha) = init_var - eps, so sigma^2 starts at init_var
        alpha = math.log(math.expm1(init_var - eps))
        self.alpha = nn.Parameter(torch.full((c_out,), alpha))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha.float()) + self.eps


@register_loss("vid", source='Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information '
                             'Distillation for Knowledge Transfer" (CVPR)')
class VID(LayerPairTerm):
    """Variational information distillation: Gaussian likelihood of the teacher's feature.

    Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information Distillation for
    Knowledge Transfer" (CVPR). A lower bound on the mutual information between the
    student's and the teacher's features, maximised through a Gaussian ``q(t | s)`` with
    mean ``mu(s)`` (a :class:`VIDHead` regressor) and learned per-channel variances
    ``sigma_c^2 = softplus(alpha_c) + eps``:

    ``L = 1/N sum_{b,c,pos} 0.5 * ( log sigma_c^2 + (t - mu(s))^2 / sigma_c^2 )``,

    the negative log-likelihood (without the constant ``0.5 log 2 pi``), averaged over all
    ``N`` elements and summed over layer pairs. Its minimum is not 0: for ``mu(s) = t`` it is
    ``0.5 * mean_c log sigma_c^2``, which the variances then lower. Defaults as the authors'
    and the CRD code: ``init_var = 5`` (``sigma^2`` at initialisation), ``eps = 1e-5``,
    middle width = the teacher's channels; CRD benchmark weight 1.

    Shapes: maps ``(B, C, L)`` / ``(B, C, H, W)`` or vectors ``(B, D)`` (maps with one
    position), the same rank per pair; the student is resized to the teacher's positions.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, student_layer: str | None = None,
                 teacher_layer: str | None = None, mid_channels: int | None = None,
                 init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers, student_layer, teacher_layer)
        if mid_channels is not None and not (isinstance(mid_channels, int) and mid_channels >= 1):
            raise ConfigError(f"vid: mid_channels must be a positive integer, got {mid_channels}")
        if not eps > 0:
            raise ConfigError(f"vid: eps must be > 0, got {eps}")
        if not init_var > eps:
            raise ConfigError(f"vid: init_var must be > eps ({eps}), got {init_var}")
        self.mid_channels = mid_channels
        self.init_var = float(init_var)
        self.eps = float(eps)
        self.heads: nn.ModuleList | None = None

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self.layer_features(student, teacher)
        for sn, s, tn, t in zip(self.student_layers, ss, self.teacher_layers, ts, strict=True):
            _check_pair(self.name, sn, s, tn, t, vectors=True)
        if self.heads is None:
            self.heads = nn.ModuleList(
                VIDHead(s.shape[1], self.mid_channels or t.shape[1], t.shape[1],
                        _as_map(t).dim(), self.init_var, self.eps).to(s.device)
                for s, t in zip(ss, ts, strict=True)
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.heads)
        assert self.heads is not None
        ss, ts = self.layer_features(student, teacher)
        values = []
        for head, s, t in zip(self.heads, ss, ts, strict=True):
            t = _as_map(t).float()
            mu = head.regressor(match_spatial(_as_map(s).float(), tuple(t.shape[2:]))).float()
            var = head.variance().view(1, -1, *([1] * (t.dim() - 2)))
            value = (0.5 * (var.log() + (t - mu).pow(2) / var)).mean()
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, init_var={self.init_var:g}, eps={self.eps:g}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")


# -- Knowledge review ----------------------------------------------------------------------------


class ABF(nn.Module):
    """ReviewKD's attention-based fusion for one stage (1-D or 2-D maps).

    ``x = BN(conv1x1(F_s))`` (``C_s -> mid``); at every stage but the deepest, the residual
    ``y`` from the deeper stage is resized (nearest) to ``x``'s positions and fused:
    ``[a0, a1] = sigmoid(conv1x1([x, y]))``, ``x = a0 * x + a1 * y``. Then ``x`` is resized
    (nearest) to the teacher's positions, becomes the next residual, and
    ``BN(conv3x3(x))`` (``mid -> C_t``) is the stage's output.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, rank: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv(rank, c_in, c_mid, 1, bias=False), _batchnorm(rank, c_mid))
        self.conv2 = nn.Sequential(_conv(rank, c_mid, c_out, 3, bias=False),
                                   _batchnorm(rank, c_out))
        self.att_conv = (nn.Sequential(_conv(rank, 2 * c_mid, 2, 1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, ...]
                ) -> tuple[Tensor, Tensor]:
        """Returns ``(output for the teacher comparison, residual for the next stage)``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            y = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, y], dim=1))
            x = x * att[:, 0:1] + y * att[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def hierarchical_context_loss(fs: Tensor, ft: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's HCL for one stage: the MSE at full resolution (weight 1) plus the MSE after
    adaptive average pooling to each level ``l`` smaller than the map's first spatial size
    (weights 1/2, 1/4, 1/8 in turn), divided by the sum of the weights used."""
    pool = F.adaptive_avg_pool2d if fs.dim() == 4 else F.adaptive_avg_pool1d
    loss = F.mse_loss(fs, ft)
    w, total = 1.0, 1.0
    for level in levels:
        if level >= fs.shape[2]:
            continue
        size = (level, level) if fs.dim() == 4 else level
        w /= 2.0
        loss = loss + w * F.mse_loss(pool(fs, size), pool(ft, size))
        total += w
    return loss / total


@register_loss("reviewkd", source='Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via '
                                  'Knowledge Review" (CVPR)')
class ReviewKD(LayerPairTerm):
    """Knowledge review: fuse student stages deep-to-shallow, compare each to the teacher's.

    Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via Knowledge Review" (CVPR). The
    student's stage features (shallow -> deep) pass through attention-based fusion modules
    (:class:`ABF`) from the deepest up, each fusing its stage with the residual of the
    deeper ones, so a shallow teacher stage is "reviewed" with deeper student knowledge.
    Each output ``O_i`` (the teacher's channels and positions) is compared with the
    teacher's stage ``i`` by the hierarchical context loss
    (:func:`hierarchical_context_loss`: MSE at full resolution and after pooling to 4, 2, 1
    positions per side, weights 1, 1/2, 1/4, 1/8 normalised by their sum):

    ``L = sum_i HCL(O_i, F_t^i)``.

    ``mid_channels`` defaults to ``min(512, C_s of the deepest stage)`` as in the authors'
    code. The paper uses weight 1 on CIFAR-100 beside CE; the authors' scripts use 0.6 to 8
    per teacher/student pair, ramped linearly over the first 20 of 240 epochs
    (``warmup_epochs`` of the schedule). Not in the CRD benchmark; default weight 1. The
    authors tap the teacher's stages before their last ReLU.

    Shapes: all stages maps of one rank, ``(B, C, L)`` or ``(B, C, H, W)``; a vector
    ``(B, D)`` (e.g. the pooled penultimate feature, the authors' last stage) counts as a
    map with one position.
    """

    def __init__(self, weight: float = 1.0, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None,
                 mid_channels: int | None = None) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = _layer_lists(
            self.name, student_layers, teacher_layers)
        if mid_channels is not None and not (isinstance(mid_channels, int) and mid_channels >= 1):
            raise ConfigError(
                f"reviewkd: mid_channels must be a positive integer, got {mid_channels}")
        self.mid_channels = mid_channels
        self.abfs: nn.ModuleList | None = None

    def _stages(self, student: Outputs, teacher: Outputs | None
                ) -> tuple[list[Tensor], list[Tensor]]:
        ss, ts = self.layer_features(student, teacher)
        names = self.student_layers + self.teacher_layers
        feats = ss + ts
        rank = max(max(f.dim() for f in feats), 3)
        for name, f in zip(names, feats, strict=True):
            if f.dim() not in (2, rank):
                shapes = ", ".join(f"{n!r} {describe(tuple(x.shape))}"
                                   for n, x in zip(names, feats, strict=True))
                raise ShapeMismatchError(
                    f"reviewkd: layer {name!r} gives {describe(tuple(f.shape))}, but the stages "
                    f"must all be maps of one rank, (B, C, L) or (B, C, H, W) (a vector (B, D) "
                    f"counts as one position); got {shapes}. Pick stages of one kind"
                )
            if f.shape[0] != feats[0].shape[0]:
                raise ShapeMismatchError(f"reviewkd: layer {name!r}: the batch sizes differ")

        def as_rank(x: Tensor) -> Tensor:
            return x.view(*x.shape, *([1] * (rank - x.dim()))) if x.dim() == 2 else x

        return [as_rank(s) for s in ss], [as_rank(t) for t in ts]

    def setup(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> None:
        ss, ts = self._stages(student, teacher)
        if self.abfs is None:
            mid = self.mid_channels or min(512, ss[-1].shape[1])
            n = len(ss)
            self.abfs = nn.ModuleList(
                ABF(s.shape[1], mid, t.shape[1], s.dim(), fuse=i < n - 1).to(s.device)
                for i, (s, t) in enumerate(zip(ss, ts, strict=True))
            )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> Tensor:
        _assert_built(self.name, self.abfs)
        assert self.abfs is not None
        ss, ts = self._stages(student, teacher)
        values = []
        residual = None
        for i in reversed(range(len(ss))):
            out, residual = self.abfs[i](ss[i].float(), residual, tuple(ts[i].shape[2:]))
            value = hierarchical_context_loss(out.float(), ts[i].float())
            values.append(value)
        return sum_terms(values)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, mid_channels={self.mid_channels}, "
                f"{layers_repr(self.student_layers, self.teacher_layers)}")


__all__ = ["AB", "AT", "FT", "NST", "VID", "FitNet", "ReviewKD"]
