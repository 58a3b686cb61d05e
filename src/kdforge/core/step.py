"""The training seam: what the :class:`~kdforge.engine.Trainer` drives.

A ``TrainStep`` owns the networks a run trains and turns one batch into losses; the trainer
owns the loop (batches, epochs, processes, files) and an ``Updater`` the optimizer steps.
The plain distiller is one ``TrainStep``; schemes that change the loop itself (mutual
learning, generators, discriminators, quantization-aware training) are others, driven by
the same trainer.

A step is split into *phases*, one per optimizer group, run in the order of
:meth:`TrainStep.optimizer_groups`: the trainer calls ``step(batch, phase)``, the updater
back-propagates the returned loss and steps that group's optimizer, then the next phase
runs on the updated weights (a min-max game: generator or discriminator first, then the
student). A step with one group is the ordinary case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, StepResult


@dataclass
class OptimGroup:
    """The parameters that one optimizer trains, with its own settings.

    Attributes:
        name: the group's (and the phase's) name, e.g. ``"student"`` or ``"generator"``;
            logged parts of a several-phase step are prefixed with it.
        params: the parameters (those that do not require a gradient are dropped).
        optim: this group's optimizer settings (``{"name": "adam", "lr": 1e-3}`` or an
            ``OptimConfig``); ``None``: the run's ``optim`` section.
        schedule: this group's learning-rate schedule settings; ``None``: the run's.
        every: the phase runs on every ``every``-th batch of an epoch (batches 0, every,
            2 every, ...), e.g. one generator step per five student steps; its schedule
            counts its own steps.
    """

    name: str
    params: list[nn.Parameter]
    optim: Any = None
    schedule: Any = None
    every: int = 1

    def __post_init__(self) -> None:
        self.params = [p for p in self.params if p.requires_grad]
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"optimizer group {self.name!r}: 'every' must be an integer "
                              f">= 1, got {self.every!r}")


@dataclass
class StepContext:
    """What the trainer tells a step before the first batch (in :meth:`TrainStep.prepare`).

    Attributes:
        num_samples: the number of training samples behind the batch source (memory banks
            are sized by it), ``None`` for a source with no data set (a generator).
        steps_per_epoch: batches per epoch on this process.
        epochs: the length of the run.
        ordered_batches: a fresh pass over every training batch in a fixed order, on the
            training device (for terms that pretrain before the run, e.g. a paraphraser);
            ``None`` when the source has no fixed order.
        pretrain: False when a resumed run restores what pretraining made.
    """

    num_samples: int | None
    steps_per_epoch: int
    epochs: int
    ordered_batches: Callable[[], Iterable[Batch]] | None = None
    pretrain: bool = True


class TrainStep(nn.Module):
    """The contract between a training scheme and the trainer.

    Subclasses implement :meth:`trained_modules`, :meth:`optimizer_groups` and
    :meth:`step`; the rest has defaults. A ``TrainStep`` is an ``nn.Module`` holding every
    module it uses, so ``.to(device)`` moves them and ``DistributedDataParallel`` can wrap
    it (the trainer calls ``model(batch, phase)``, which is :meth:`step`).

    Attributes:
        progress: training progress in epochs (fractional), set by the trainer before
            every step; weight schedules read it.
        find_unused_parameters: tell ``DistributedDataParallel`` that a phase leaves some
            parameters without gradients (true of every step with several phases).
    """

    progress: float = 0.0

    # -- what the step trains ---------------------------------------------------------------
    def trained_modules(self) -> dict[str, nn.Module]:
        """The networks being trained, by name; the first is the one evaluated, whose
        weights are the run's result (``model.safetensors``)."""
        raise NotImplementedError

    def optimizer_groups(self) -> list[OptimGroup]:
        """One group per optimizer, in the order their phases run within a step."""
        raise NotImplementedError

    def state_modules(self) -> dict[str, nn.Module]:
        """Everything a checkpoint must hold to resume the step exactly: the trained
        modules and any stateful helpers (loss terms with memory banks, adapters)."""
        return self.trained_modules()

    def eval_module(self) -> nn.Module:
        """The network that evaluation measures (default: the first trained module)."""
        return next(iter(self.trained_modules().values()))

    @property
    def eval_teacher(self) -> nn.Module | None:
        """The teacher that fidelity (agreement, KL) is measured against, or ``None``."""
        return None

    def synced_buffers(self) -> list[str]:
        """Names (as in ``self.named_buffers()``) of buffers the step itself keeps identical
        on every process; the distributed wrapper does not re-broadcast them."""
        return []

    @property
    def phases(self) -> list[str]:
        return [group.name for group in self.optimizer_groups()]

    @property
    def find_unused_parameters(self) -> bool:
        return len(self.optimizer_groups()) > 1

    # -- the step ---------------------------------------------------------------------------
    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        """Check shapes and build lazy parameters on a first batch, before any optimizer
        exists (the default does nothing)."""

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        """The loss of ``phase`` (the group about to be updated) for ``batch``."""
        raise NotImplementedError

    def forward(self, batch: Batch, phase: str | None = None) -> StepResult:
        return self.step(batch, phase)

    def train(self, mode: bool = True) -> TrainStep:
        """Set training mode; subclasses keep frozen teachers in eval mode."""
        return super().train(mode)


def check_groups(step: TrainStep) -> list[OptimGroup]:
    """The step's optimizer groups, checked: unique names, none empty, no parameter in two
    groups (it would be stepped twice)."""
    groups = step.optimizer_groups()
    if not groups:
        raise ConfigError(f"{type(step).__name__} declares no optimizer group")
    seen: dict[int, str] = {}
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"{type(step).__name__} has optimizer groups with the same name: {names}")
    for group in groups:
        if not group.params:
            raise ConfigError(
                f"optimizer group {group.name!r} of {type(step).__name__} has no trainable "
                "parameters; give it the parameters it updates (requires_grad=True)"
            )
        for p in group.params:
            if id(p) in seen:
                raise ConfigError(
                    f"a parameter is in optimizer groups {seen[id(p)]!r} and {group.name!r}; "
                    "each parameter belongs to exactly one group"
                )
            seen[id(p)] = group.name
    return groups


def module_state(modules: Mapping[str, nn.Module]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` pairs with wrappers (``DistributedDataParallel``, compiled
    modules) removed, so state dicts have the plain module's keys."""
    for name, module in modules.items():
        inner = getattr(module, "_orig_mod", module)
        inner = getattr(inner, "module", inner) if type(inner).__name__ in (
            "DistributedDataParallel", "DataParallel") else inner
        yield name, inner


@dataclass
class StepRecord:
    """What the trainer hands step callbacks after each update (cheap: no host syncs)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    batch_size: int
    results: dict[str, StepResult] = field(default_factory=dict)


__all__ = ["OptimGroup", "StepContext", "StepRecord", "TrainStep", "check_groups",
           "module_state"]
