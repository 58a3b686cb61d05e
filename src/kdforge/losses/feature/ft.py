"""Factor transfer: a paraphraser on the teacher, a translator on the student (Kim et al. 2018)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.losses.adapters import match_spatial
from kdforge.losses.base import LossTerm, read_features, register_loss
from kdforge.losses.feature.shared import (
    _as_map,
    _assert_built,
    _batchnorm,
    _check_pair,
    _conv,
    _conv_transpose,
    _single_layer,
)


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
