"""The optimizer step, apart from the loop: backward, AMP scaling, clipping, optimizer and
learning-rate schedule, for each optimizer group of a :class:`~kdforge.core.step.TrainStep`.

A step with several groups (a generator, a discriminator, the student) is updated phase by
phase: ``update(phase, loss)`` back-propagates that phase's loss, steps that group's
optimizer and schedule, and clears every group's gradients, so the next phase starts clean
on the updated weights. Each group keeps its own optimizer, schedule and loss scaler, and
all of them are checkpointed and resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.config import OptimConfig, ScheduleConfig
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.core.step import OptimGroup
from kdforge.engine.optim import (
    as_optim_config,
    as_schedule_config,
    build_optimizer,
    build_scheduler,
)


@dataclass
class _Group:
    name: str
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


class Updater:
    """Updates the optimizer groups of a step.

    Args:
        groups: the step's groups, in phase order.
        optim, schedule: the run's sections; a group's own settings override them.
        steps_per_epoch, epochs: the schedule's length (optimizer steps per epoch).
        device_type: ``"cuda"`` or ``"cpu"`` (the loss scaler's device).
        fp16: scale losses (fp16 autocast needs it; bf16 and fp32 do not).
        grad_clip: the largest global gradient norm per group (``None``: no clipping).
    """

    def __init__(self, groups: list[OptimGroup], *, optim: OptimConfig, schedule: ScheduleConfig,
                 steps_per_epoch: int, epochs: int, device_type: str, fp16: bool = False,
                 grad_clip: float | None = None) -> None:
        self.grad_clip = grad_clip
        self.groups: dict[str, _Group] = {}
        for group in groups:
            optim_cfg = as_optim_config(group.optim, optim)
            schedule_cfg = as_schedule_config(group.schedule, schedule)
            optimizer = build_optimizer(group.params, optim_cfg)
            own_steps = -(-steps_per_epoch // group.every)  # the batches its phase runs on
            scheduler = build_scheduler(optimizer, schedule_cfg, steps_per_epoch=own_steps,
                                        epochs=epochs, base_lr=optim_cfg.lr)
            scaler = torch.amp.GradScaler(device_type, enabled=fp16)
            self.groups[group.name] = _Group(group.name, group.params, optimizer, scheduler,
                                             scaler)

    def update(self, phase: str, loss: Tensor) -> None:
        """Back-propagate ``loss`` and step group ``phase``; clear every group's gradients."""
        try:
            group = self.groups[phase]
        except KeyError:
            raise ConfigError(f"no optimizer group {phase!r}; the step has "
                              f"{sorted(self.groups)}") from None
        group.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            group.scaler.unscale_(group.optimizer)
            torch.nn.utils.clip_grad_norm_(group.params, self.grad_clip)
        group.scaler.step(group.optimizer)
        group.scaler.update()
        group.scheduler.step()
        for other in self.groups.values():
            other.optimizer.zero_grad(set_to_none=True)

    def lr(self, phase: str | None = None) -> float:
        """The current learning rate of ``phase`` (default: the first group)."""
        group = self.groups[phase] if phase is not None else next(iter(self.groups.values()))
        return group.optimizer.param_groups[0]["lr"]

    def optimizer(self, phase: str | None = None) -> torch.optim.Optimizer:
        group = self.groups[phase] if phase is not None else next(iter(self.groups.values()))
        return group.optimizer

    def state_dict(self) -> dict[str, Any]:
        return {name: {"optimizer": g.optimizer.state_dict(),
                       "scheduler": g.scheduler.state_dict(),
                       "scaler": g.scaler.state_dict()} for name, g in self.groups.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state) != sorted(self.groups):
            raise CheckpointError(
                f"the checkpoint has optimizer groups {sorted(state)}, this step has "
                f"{sorted(self.groups)}; resume with the scheme that wrote it"
            )
        for name, group in self.groups.items():
            group.optimizer.load_state_dict(state[name]["optimizer"])
            group.scheduler.load_state_dict(state[name]["scheduler"])
            group.scaler.load_state_dict(state[name]["scaler"])


__all__ = ["Updater"]
