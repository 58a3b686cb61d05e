"""The loss terms of DeepInversion's image synthesis, each from its formula.

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR
2020. An input batch ``x`` is optimised so that a frozen teacher ``T`` classifies it as the
target labels ``y`` and its statistics look like the training data's::

    L(x) = CE(T(x), y) + a_tv R_TV(x) + a_l2 ||x||^2 + a_f R_feature(x) [+ a_c R_compete(x)]

- :func:`total_variation`: ``R_TV(x)``, the mean absolute difference of neighbouring
  values along every spatial axis (images: rows and columns; 1-D signals: positions);
- :func:`l2_prior`: ``||x||^2``, the squared norm of each input, averaged over the batch;
- :class:`BNStatistics`: ``R_feature(x) = sum_l ||mu_l(x) - mu_l^BN||_2 +
  ||sigma^2_l(x) - sigma^2_l^BN||_2`` over every BatchNorm layer ``l``, where ``mu_l(x)``,
  ``sigma^2_l(x)`` are the batch mean and (biased) variance of the layer's *input* per
  channel, read by forward pre-hooks, and ``mu_l^BN``, ``sigma^2_l^BN`` its running
  statistics (the teacher is in eval mode, so they are read, never updated);
- :func:`competition`: Adaptive DeepInversion's ``R_compete = 1 - JS(p_T(x), p_S(x))``,
  which favours inputs the teacher and the student disagree on, with
  ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` and ``m = (p + q) / 2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def total_variation(x: Tensor) -> Tensor:
    """``R_TV(x)``: mean |x[i+1] - x[i]| along each spatial axis of ``(B, C, *spatial)``
    (a ``(B, D)`` vector: along ``D``), summed over the axes."""
    axes = range(2, x.ndim) if x.ndim >= 3 else range(1, x.ndim)
    return sum((x.diff(dim=a).abs().mean() for a in axes), x.new_zeros(()))


def l2_prior(x: Tensor) -> Tensor:
    """``||x||^2`` per input, averaged over the batch."""
    return x.pow(2).flatten(1).sum(1).mean()


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None]


class BNStatistics:
    """``R_feature``: forward pre-hooks on every BatchNorm layer of ``model`` record the
    distance of the batch statistics of its input from the layer's running statistics.

    Use as a context manager around the teacher's forward pass; :attr:`loss` is the sum
    over layers of the forward pass just made.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.terms: list[Tensor] = []
        self.handles: list = []

    def _hook(self, layer: _BatchNorm, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        dims = [0, *range(2, x.ndim)]  # all but the channel axis
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - layer.running_mean)
                          + torch.linalg.vector_norm(var - layer.running_var))

    def __enter__(self) -> BNStatistics:
        self.terms = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @property
    def loss(self) -> Tensor:
        return torch.stack(self.terms).sum()


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """Jensen-Shannon divergence of two ``(B, K)`` probability rows, averaged over rows."""
    m = (p + q) / 2
    kl_pm = (p * ((p + eps).log() - (m + eps).log())).sum(1)
    kl_qm = (q * ((q + eps).log() - (m + eps).log())).sum(1)
    return ((kl_pm + kl_qm) / 2).mean()


def competition(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``R_compete = 1 - JS(p_T, p_S)`` (softmax probabilities)."""
    return 1.0 - js_divergence(teacher_logits.softmax(1), student_logits.softmax(1))


__all__ = ["BNStatistics", "batchnorm_layers", "competition", "js_divergence", "l2_prior",
           "total_variation"]
