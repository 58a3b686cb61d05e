"""The scheme contract: how a registered scheme builds a run's step or a sequence of runs.

A scheme changes who teaches whom. It plugs into a run in up to three places, all driven
by the one :class:`~kdforge.engine.Trainer`:

- :meth:`Scheme.adapt_data`: what the run's data sets hold (another modality per sample
  for cross-modal distillation);
- :meth:`Scheme.build_step`: the :class:`~kdforge.core.step.TrainStep` trained (N peers
  for mutual learning, auxiliary exits for self-distillation); the default is the plain
  :class:`~kdforge.distill.Distiller`;
- :meth:`Scheme.report`: what the run's ``summary.json`` adds under ``"scheme"`` (every
  peer's or exit's accuracy).

A scheme that is a *sequence of runs* (an assistant chain, born-again generations, a
generalist and its specialists, two tasks in turn) overrides :meth:`Scheme.run`: it derives
one :class:`~kdforge.config.RunConfig` per stage and hands each to the
:class:`Runner`, which trains it in its own directory, or resumes it, or reads it back if
it finished, so re-running the command after an interruption continues where it stopped.

Every scheme returns *records*: flat dicts with at least ``variant``, ``student``,
``test_accuracy`` and ``agreement`` (percent) and ``train_seconds``, which the command
writes to ``scheme.json`` and ``kdforge bench schemes`` averages over seeds. A record with
``compare: False`` (a part not trained at the scheme's budget, such as a given teacher) gets
no student-alone or plain-KD baseline in the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset

from kdforge.config import RunConfig, SchemeConfig, parse_config, parse_section
from kdforge.core.errors import ConfigError, DataError
from kdforge.core.registry import Registry
from kdforge.core.source import BatchSource
from kdforge.core.step import TrainStep
from kdforge.core.teacher import Teacher
from kdforge.data.datasets import DataSplits
from kdforge.data.loaders import eval_loader
from kdforge.engine.metrics import evaluate
from kdforge.losses.base import LossTerm

#: Registered schemes by name (``kdforge list schemes``): classes derived from :class:`Scheme`.
SCHEMES: Registry[type[Scheme]] = Registry("scheme")


class SchemeOptions(BaseModel):
    """A scheme's options (the keys of its ``scheme:`` section besides ``name``)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class RunData:
    """A run's data: the loaded splits and the train / validation / test sets it uses."""

    splits: DataSplits
    train: Dataset
    val: Dataset | None
    test: Dataset

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.splits.input_shape

    def with_sets(self, **changes: Any) -> RunData:
        return replace(self, **changes)


@dataclass
class StepInputs:
    """What a scheme builds its step from, made by :mod:`kdforge.api` from the run config.

    Attributes:
        cfg: the run's config.
        data: its (adapted) data.
        student: the student built from ``cfg.student`` (seeded by ``cfg.seed``).
        teacher: the run's teacher (``None`` without one).
        eval_teacher: the teacher fidelity is measured against.
        terms: the loss terms of ``cfg.losses``.
        make_model: ``(name, options) -> nn.Module`` with the run's classes and input shape.
    """

    cfg: RunConfig
    data: RunData
    student: nn.Module
    teacher: Teacher | None
    eval_teacher: nn.Module | None
    terms: list[LossTerm]
    make_model: Callable[[str, dict[str, Any]], nn.Module]


@dataclass
class StageResult:
    """A finished stage: its directory and its ``summary.json``."""

    run_dir: Path
    summary: dict[str, Any]


class Runner(Protocol):
    """What a sequence scheme runs its stages with (provided by :mod:`kdforge.api`)."""

    root: Path

    def stage(self, cfg: RunConfig) -> StageResult:
        """Train ``cfg`` in ``root / cfg.name`` (resume it, or read it if it finished)."""
        ...

    def data(self, cfg: RunConfig) -> RunData:
        """The data a run of ``cfg`` trains and is tested on."""
        ...


class Scheme:
    """Base of the registered schemes; see the module docstring.

    Subclasses set :attr:`Options` (a pydantic model of their options) and override the
    hooks they need. ``self.options`` holds the validated options.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[SchemeOptions]] = SchemeOptions
    #: True for schemes that are a sequence of runs (``kdforge train`` runs every stage).
    sequence: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = parse_section(self.Options, dict(options or {}), f"scheme {self.name!r}")

    # -- one run ------------------------------------------------------------------------------
    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        """The run's data as this scheme trains on it (default: unchanged)."""
        return data

    def build_source(self, cfg: RunConfig, data: RunData, source: BatchSource) -> BatchSource:
        """Where the run's training batches come from (default: ``source``, the training
        set). A data-free scheme returns a generator source
        (:class:`~kdforge.data.sources.GeneratorSource`) and wraps ``data.train`` in
        :class:`TrainingInputsForbidden` in :meth:`adapt_data`, so any read raises."""
        return source

    def build_step(self, inputs: StepInputs) -> TrainStep:
        """The step the trainer drives (default: the plain distiller)."""
        from kdforge.distill.distiller import Distiller

        return Distiller(inputs.student, inputs.teacher, inputs.terms,
                         eval_teacher=inputs.eval_teacher)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        """Extra results of a finished run, stored under ``summary["scheme"]``; a
        ``"records"`` list there replaces the run's one record (a record per peer, exit)."""
        return {}

    # -- the command --------------------------------------------------------------------------
    def check(self, cfg: RunConfig) -> None:
        """Refuse a config this scheme cannot run, before any directory is written (a
        sequence scheme checks here what its stages need; the default accepts)."""

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        """Run the scheme (default: the one run of ``cfg``); return its records."""
        result = runner.stage(cfg)
        return self.records(cfg, result)

    def records(self, cfg: RunConfig, result: StageResult) -> list[dict[str, Any]]:
        """Records of a one-run scheme: the run's own (from :meth:`report`, or its test)."""
        extra = result.summary.get("scheme", {})
        if "records" in extra:
            return [dict(r, train_seconds=result.summary["train_time_s"],
                         run_dir=str(result.run_dir)) for r in extra["records"]]
        return [record_of(result, cfg.student.name, cfg.student.options)]


def record_of(result: StageResult, student: str, options: dict[str, Any],
              variant: str | None = None, **extra: Any) -> dict[str, Any]:
    """The standard record of one finished run (accuracy and agreement in percent)."""
    test = result.summary["test"]
    return {"variant": variant, "student": student, "student_options": options,
            "test_accuracy": 100.0 * test["accuracy"],
            "agreement": 100.0 * test["agreement"] if "agreement" in test else None,
            "train_seconds": result.summary["train_time_s"], "run_dir": str(result.run_dir),
            **extra}


class TrainingInputsForbidden:
    """Stands in for the training set of a data-free run: its size and classes can be
    read, any of its inputs cannot (``DataError``), so a test can prove that the run never
    read a training input (``training_inputs_read`` is 0)."""

    def __init__(self, dataset: Dataset, scheme: str) -> None:
        self._n, self.scheme = len(dataset), scheme  # type: ignore[arg-type]
        self.classes = list(getattr(dataset, "classes", []))
        self.input_shape = getattr(dataset, "input_shape", None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self._n

    def _refuse(self, *args: Any) -> Any:
        raise DataError(f"scheme {self.scheme!r} is data-free: it must not read a training "
                        "input (its batches come from its generator)")

    __getitem__ = __getitems__ = subset = _refuse

    @property
    def targets(self) -> Any:
        return self._refuse()


def build_scheme(section: SchemeConfig) -> Scheme:
    """The scheme a ``scheme:`` section names, with its options checked."""
    return SCHEMES.get(section.name)(section.options)


def register(name: str, *, paper: str):
    """Class decorator registering a scheme under ``name`` with the paper it implements."""
    return SCHEMES.register_named(name, source=paper)


def derive(cfg: RunConfig, name: str, **changes: Any) -> RunConfig:
    """A stage's config: ``cfg`` with ``name`` and top-level sections replaced (``None``
    removes one); the stage has no scheme unless ``changes`` gives one."""
    data = cfg.to_dict()
    data.pop("scheme", None)
    data["name"] = name
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value.model_dump(mode="json", exclude_none=True) if isinstance(
                value, BaseModel) else value
    return parse_config(data)


def evaluate_on(trainer: Any, module: nn.Module, dataset: Dataset, *, num_classes: int,
                teacher: nn.Module | None = None) -> dict[str, float]:
    """Metrics of ``module`` on ``dataset`` on the trainer's device and processes."""
    env = trainer.env
    loader = eval_loader(dataset, trainer.eval_batch_size, rank=env.rank,
                         world_size=env.world_size)
    module.to(trainer.device)
    return evaluate(module, loader, num_classes=num_classes, teacher=teacher,
                    device=trainer.device, autocast_dtype=trainer.autocast_dtype)


def require(condition: bool, message: str) -> None:
    """Refuse a bad scheme config before training, with a message naming the problem."""
    if not condition:
        raise ConfigError(message)


def evaluate_runs(run_dirs: list[Path], dataset: Dataset, *, num_classes: int,
                  device: str = "auto", teacher: nn.Module | None = None) -> dict[str, float]:
    """Test metrics of the mean-probability ensemble of finished runs' models (one run:
    that model alone), e.g. born-again generations."""
    from kdforge.engine.runtime import resolve_device
    from kdforge.models.runs import load_run_model
    from kdforge.teachers.ensemble import EnsembleTeacher

    models = [load_run_model(d) for d in run_dirs]
    module = models[0] if len(models) == 1 else EnsembleTeacher(models, combine="mean_probs")
    where = resolve_device(device)
    module.to(where)
    if teacher is not None:
        teacher.to(where)
    return evaluate(module, eval_loader(dataset, 512), num_classes=num_classes,
                    teacher=teacher, device=where)


__all__ = ["SCHEMES", "RunData", "Runner", "Scheme", "SchemeOptions", "StageResult",
           "StepInputs", "TrainingInputsForbidden", "build_scheme", "derive", "evaluate_on", "evaluate_runs",
           "record_of", "register", "require"]
