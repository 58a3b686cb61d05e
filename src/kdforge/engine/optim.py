"""Optimizers and learning-rate schedules by name: the ``optim:`` and ``schedule:`` sections.

Each is registered, so ``kdforge list optimizers`` / ``kdforge list schedules`` show them
and a config names them; adding one is one decorated function here (or in your code).

An optimizer factory takes ``(params, cfg)`` with ``cfg`` an ``OptimConfig``. A schedule
factory takes ``(step, steps_per_epoch, epochs, cfg, base_lr)`` and returns the multiplier
of the base learning rate after ``step`` optimizer steps; every schedule starts with the
shared linear warm-up of ``cfg.warmup_epochs`` (from 1% of the rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdforge.config import OptimConfig, ScheduleConfig
from kdforge.core.errors import ConfigError
from kdforge.core.registry import Registry

OptimizerFactory = Callable[[Sequence[nn.Parameter], OptimConfig], torch.optim.Optimizer]
ScheduleFactory = Callable[[int, int, int, ScheduleConfig, float], float]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


@OPTIMIZERS.register("sgd", source="Robbins & Monro 1951; Nesterov momentum: Sutskever et al. 2013")
def sgd(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", source="Loshchilov & Hutter 2019, Decoupled Weight Decay")
def adamw(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam", source="Kingma & Ba 2015")
def adam(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, as L2)."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("shampoo", source="Gupta, Koren & Singer 2018 (pytorch-optimizer)")
def shampoo(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Shampoo: preconditioned by per-dimension second-moment matrices (needs kdforge[shampoo])."""
    try:
        from pytorch_optimizer import Shampoo
    except ImportError:
        raise ConfigError(
            "optim.name shampoo needs the pytorch-optimizer package: pip install 'kdforge[shampoo]'"
        ) from None
    return Shampoo(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _warmup(step: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float | None:
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return 0.01 + 0.99 * step / warmup if step < warmup else None


@SCHEDULES.register("cosine", source="Loshchilov & Hutter 2017, SGDR")
def cosine(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig,
           base_lr: float) -> float:
    """Half a cosine from the base rate down to ``min_lr`` over the run (after warm-up)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.min_lr / base_lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("step", source="He et al. 2016 (decay by gamma at milestones)")
def step_decay(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig,
               base_lr: float) -> float:
    """The rate times ``gamma`` for each milestone epoch passed."""
    epoch = step / steps_per_epoch
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


@SCHEDULES.register("constant")
def constant(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig,
             base_lr: float) -> float:
    """The base rate throughout (after warm-up)."""
    return 1.0


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig,
              base_lr: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps: the shared
    warm-up, then the schedule registered as ``cfg.name``."""
    warm = _warmup(step, steps_per_epoch, cfg)
    if warm is not None:
        return warm
    return SCHEDULES.get(cfg.name)(step, steps_per_epoch, epochs, cfg, base_lr)


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer registered as ``cfg.name`` over ``params``."""
    return OPTIMIZERS.get(cfg.name)(params, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *,
                    steps_per_epoch: int, epochs: int, base_lr: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    SCHEDULES.get(cfg.name)  # an unknown name fails here, before training
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg, base_lr))


def as_optim_config(value: Any, default: OptimConfig) -> OptimConfig:
    """A group's optimizer settings: ``None`` (the run's), an ``OptimConfig``, or a mapping
    of fields that override the run's (``{"lr": 1e-3}``)."""
    return _as_config(value, default, OptimConfig, "optimizer")


def as_schedule_config(value: Any, default: ScheduleConfig) -> ScheduleConfig:
    """A group's schedule settings, as :func:`as_optim_config`."""
    return _as_config(value, default, ScheduleConfig, "schedule")


def _as_config(value: Any, default: Any, kind: type, what: str) -> Any:
    if value is None:
        return default
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        from kdforge.config import parse_section

        return parse_section(kind, {**default.model_dump(), **value}, what)
    raise ConfigError(f"{what} settings must be a mapping or {kind.__name__}, got "
                      f"{type(value).__name__}")


__all__ = ["OPTIMIZERS", "SCHEDULES", "as_optim_config", "as_schedule_config",
           "build_optimizer", "build_scheduler", "lr_factor"]
