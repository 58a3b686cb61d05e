"""Callbacks: code that runs after each optimizer step and after each epoch.

A callback is either a plain function ``f(trainer, record)``, called after each epoch with
the epoch's record (as the trainer has always done), or a :class:`Callback` object with
``on_step`` (after every update: pruning masks, EMA weights, custom schedules) and
``on_epoch``. ``on_step`` receives a :class:`~kdforge.core.step.StepRecord`; its results
hold tensors, so reading their values syncs with the device: do it sparingly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kdforge.core.step import StepRecord

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class Callback:
    """Base of step-and-epoch callbacks; override what you need."""

    def on_step(self, trainer: Trainer, record: StepRecord) -> None:
        """After each optimizer step (every phase of the batch has been updated)."""

    def on_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each epoch, once it is validated, logged and checkpointed."""


class _EpochFunction(Callback):
    def __init__(self, fn: Callable[[Any, dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.fn(trainer, record)


def as_callbacks(callbacks: Sequence[Any]) -> list[Callback]:
    """Callback objects as they are; functions become epoch callbacks."""
    out: list[Callback] = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(_EpochFunction(cb))
        else:
            from kdforge.core.errors import ConfigError

            raise ConfigError(f"a callback must be a function or a Callback, got {type(cb).__name__}")
    return out


def overrides_on_step(callback: Callback) -> bool:
    """Whether ``callback`` does anything after a step (the trainer skips building a
    record per step when none does)."""
    return type(callback).on_step is not Callback.on_step


__all__ = ["Callback", "as_callbacks", "overrides_on_step"]
