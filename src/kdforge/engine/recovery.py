"""What a run does when its loss becomes NaN or infinite: stop, or restart with a lower LR.

The trainer checks the logged loss parts every ``train.log_every`` steps and the trained
weights before each checkpoint, so a checkpoint never holds non-finite weights: the last
good one stays. With ``train.on_nonfinite: stop`` (the default) the run ends with a
:class:`~kdforge.core.errors.NonFiniteLossError` naming the part that went bad and the
step, and ``kdforge train --resume RUN_DIR --lr-scale 0.5`` continues from that checkpoint
with every learning rate halved. With ``on_nonfinite: restart`` the trainer does that
itself, up to ``train.max_restarts`` times, multiplying the learning rates by
``train.restart_lr_factor`` each time (a divergence is usually a too-high learning rate).
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Any

import torch

from kdforge.core.errors import NonFiniteLossError
from kdforge.core.step import module_state

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer
    from kdforge.engine.updater import Updater


def scale_learning_rates(updater: Updater, factor: float) -> None:
    """Multiply every group's learning rate, now and for the rest of its schedule, by
    ``factor`` (the schedule's base rates are scaled, so the checkpoint keeps it)."""
    if not factor > 0:
        raise NonFiniteLossError(f"a learning-rate scale must be positive, got {factor}")
    for group in updater.groups.values():
        scheduler = group.scheduler
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for param_group in group.optimizer.param_groups:
            param_group["lr"] *= factor
            if "initial_lr" in param_group:
                param_group["initial_lr"] *= factor
        scheduler._last_lr = [pg["lr"] for pg in group.optimizer.param_groups]


def rescale(trainer: Trainer, factor: float) -> None:
    """Scale the trainer's learning rates by ``factor`` and keep the total in its state."""
    scale_learning_rates(trainer.updater, factor)
    trainer.lr_scale *= factor


def check_weights(trainer: Trainer) -> None:
    """Refuse to checkpoint non-finite weights (an update can blow up after the last loss
    that was checked)."""
    for name, module in module_state(trainer.train_step.trained_modules()):
        for key, value in module.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteLossError(
                    f"the weights of {name!r} ({key}) became NaN or infinite in epoch "
                    f"{trainer.epoch} (after step {trainer.global_step}); the last good "
                    "checkpoint is kept. " + ADVICE)


ADVICE = ("Resume from it with a lower learning rate (kdforge train --resume RUN_DIR "
          "--lr-scale 0.5), set train.on_nonfinite=restart to do that automatically, set "
          "train.grad_clip (e.g. 5), or use train.precision=fp32.")


class Recovery:
    """Restarts of one trainer after a non-finite loss (``train.on_nonfinite: restart``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        cfg = trainer.cfg
        self.enabled = cfg.on_nonfinite == "restart"
        self.factor, self.limit = cfg.restart_lr_factor, cfg.max_restarts
        self.restarts = 0
        self._initial: dict[str, Any] | None = None

    def snapshot(self) -> None:
        """Keep the state training starts from (restored when no checkpoint exists yet)."""
        if self.enabled:
            self._initial = copy.deepcopy(self.trainer.state_dict())

    def restart(self, error: NonFiniteLossError, log) -> None:
        """Go back to the last good state with lower learning rates, or re-raise ``error``."""
        if not self.enabled or self.restarts >= self.limit:
            if self.enabled:
                raise NonFiniteLossError(f"{error} (after {self.restarts} restarts with lower "
                                         "learning rates: the run diverges; check the data "
                                         "and the losses' weights)") from None
            raise error
        from kdforge.engine.checkpoint import CHECKPOINT, load_checkpoint

        trainer = self.trainer
        target = trainer.lr_scale * self.factor  # lower than where it diverged
        path = trainer.run_dir / CHECKPOINT if trainer.run_dir is not None else None
        state = load_checkpoint(path) if path is not None and path.is_file() else self._initial
        assert state is not None, "snapshot() runs before training"
        trainer.load_state_dict(state)  # sets trainer.lr_scale to the state's own
        self.restarts += 1
        rescale(trainer, target / trainer.lr_scale)
        trainer.history = [r for r in trainer.history if r["epoch"] <= trainer.epoch]
        if log is not None:
            log.truncate_after(trainer.epoch)
        if trainer.verbose:
            print(f"kdforge: {error}\nkdforge: restart {self.restarts} of {self.limit}: from "
                  f"epoch {trainer.epoch}, learning rates x{trainer.lr_scale:g}",
                  file=sys.stderr, flush=True)


__all__ = ["ADVICE", "Recovery", "check_weights", "rescale", "scale_learning_rates"]
