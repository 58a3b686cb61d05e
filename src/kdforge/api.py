"""What the CLI does, as plain functions: build a run from its config, train, evaluate, list.

Everything is built, and every name, option and shape checked, before the first training
step, so a bad config fails in seconds with a message saying what to fix.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.config import LossConfig, RunConfig, StoreTeacherConfig, TeacherConfig, load_config
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.core.faults import fault_point
from kdforge.core.files import check_writable, remove_temporaries, write_json, write_text
from kdforge.core.source import BatchSource
from kdforge.core.step import TrainStep
from kdforge.core.teacher import Teacher
from kdforge.data.datasets import load_dataset, normalize_splits, train_and_val
from kdforge.data.datasets.classes import select_classes
from kdforge.data.loaders import eval_loader
from kdforge.data.sources import DatasetSource
from kdforge.data.views import View, build_view
from kdforge.engine import distributed
from kdforge.engine.checkpoint import CHECKPOINT, LEGACY_CHECKPOINT
from kdforge.engine.metrics import evaluate, measure_latency
from kdforge.engine.runtime import resolve_device, seed_everything
from kdforge.engine.trainer import Trainer
from kdforge.losses.base import LossTerm, build_loss
from kdforge.models import count_parameters, create_model
from kdforge.models.init import init_from_run
from kdforge.models.runs import WEIGHTS, load_run_model, save_run_model
from kdforge.schemes import RunData, Scheme, StageResult, StepInputs, build_scheme
from kdforge.teachers.ensemble import EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from kdforge.teachers.stored import open_store_run

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
#: The validation split is carved from train with this fixed seed, so runs that differ in
#: seed differ only in initialisation and data order, never in what they are validated on.
VAL_SPLIT_SEED = 0


#: A run's data (splits, train, val, test); the type lives with the schemes that adapt it.
Data = RunData


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


# -- building blocks ---------------------------------------------------------------------------

def build_data(cfg: RunConfig) -> Data:
    """The run's data: the named data set, normalised as ``data.normalize`` says, restricted
    to ``data.classes`` if given, validated on the data set's own validation set if it has
    one, else on ``data.val_fraction`` carved from train."""
    splits = normalize_splits(load_dataset(cfg.data.name, **cfg.data.options),
                              cfg.data.normalize)
    if cfg.data.classes is not None:
        subset = {"classes": cfg.data.classes, "rest": cfg.data.rest}
        train = select_classes(splits.train, rest_ratio=cfg.data.rest_ratio, **subset)
        val = select_classes(splits.val, **subset) if splits.val is not None else None
        splits = replace(splits, train=train, test=select_classes(splits.test, **subset),
                         val=val, num_classes=train.num_classes)
    default = type(cfg.data).model_fields["val_fraction"].default
    train, val = train_and_val(splits, cfg.data.val_fraction, VAL_SPLIT_SEED,
                               default_fraction=default)
    return Data(splits, train, val, splits.test)


def build_model(name: str, options: dict[str, Any], num_classes: int,
                input_shape: tuple[int, ...], weights: str | None = None,
                init: str | None = None) -> nn.Module:
    model = create_model(name, num_classes, input_shape, weights=weights, **options)
    if init is not None:
        init_from_run(model, init)
    return model


@dataclass
class Teaching:
    """What a run learns from: its teacher, its batch source and the teacher that
    evaluation measures fidelity against (a store's own teacher run, if it kept one)."""

    teacher: Teacher | None
    source: BatchSource
    eval_teacher: nn.Module | None


def build_teacher(cfg: RunConfig, num_classes: int, input_shape: tuple[int, ...]) -> Teacher | None:
    """The run's model teacher(s): one, an ensemble, or none (a store is not built here:
    see :func:`build_teaching`)."""
    if any(isinstance(t, StoreTeacherConfig) for t in cfg.teachers):
        raise ConfigError("a soft-label store is a whole teacher: store ensemble labels in one "
                          "store (kdforge soft-labels with a list of teachers) instead")
    members = [_one_teacher(t, num_classes, input_shape) for t in cfg.teachers]
    if not members:
        return None
    if len(members) == 1:
        return members[0]
    return EnsembleTeacher(members, combine=cfg.ensemble, weights=cfg.ensemble_weights)


def _one_teacher(t: TeacherConfig, num_classes: int, input_shape: tuple[int, ...]) -> Teacher:
    if t.run is not None:
        model = load_run_model(t.run)
    else:
        assert t.name is not None
        if t.weights is None:
            raise ConfigError(f"teacher {t.name!r} needs 'weights': a trained model's weights file")
        model = build_model(t.name, t.options, num_classes, input_shape, t.weights)
    return ModuleTeacher(model, precision=t.precision)


def build_losses(losses: list[LossConfig]) -> list[LossTerm]:
    return [build_loss(loss.name, weight=loss.weight, start_epoch=loss.start_epoch,
                       warmup_epochs=loss.warmup_epochs, stop_epoch=loss.stop_epoch,
                       **loss.options) for loss in losses]


def build_run_view(cfg: RunConfig, num_classes: int, input_shape: tuple[int, ...]) -> View | None:
    """The run's view (teaching setting), or ``None``."""
    if cfg.view is None:
        return None
    return build_view(cfg.view.name, input_shape, num_classes, **cfg.view.options)


def build_teaching(cfg: RunConfig, data: Data) -> Teaching:
    """The teacher, batch source and evaluation teacher of a run. A soft-label store is
    opened, checked against the run's training samples and paired with its replay in one
    place (:func:`kdforge.teachers.stored.open_store_run`)."""
    k, shape = data.splits.num_classes, data.splits.input_shape
    stores = [t for t in cfg.teachers if isinstance(t, StoreTeacherConfig)]
    if stores and len(cfg.teachers) == 1:
        if cfg.view is not None:
            raise ConfigError("a run that learns from a soft-label store replays the store's own "
                              "views; remove the 'view' section")
        run = open_store_run(stores[0], data.train, input_shape=shape, num_classes=k,
                             data_cfg=cfg.data, batch_size=cfg.data.batch_size,
                             num_workers=cfg.data.num_workers)
        return Teaching(run.teacher, run.source, _eval_teacher(cfg, k, shape, run.eval_teacher))
    teacher = build_teacher(cfg, k, shape)
    source = DatasetSource(data.train, cfg.data.batch_size, view=build_run_view(cfg, k, shape),
                           num_workers=cfg.data.num_workers)
    return Teaching(teacher, source, _eval_teacher(cfg, k, shape, teacher))


def _eval_teacher(cfg: RunConfig, num_classes: int, input_shape: tuple[int, ...],
                  default: nn.Module | None) -> nn.Module | None:
    """The teacher fidelity is measured against: ``eval_teacher`` if set (it never
    teaches), else the run's own."""
    if cfg.eval_teacher is None:
        return default
    return _one_teacher(cfg.eval_teacher, num_classes, input_shape)


def build_distiller(cfg: RunConfig, data: Data, teaching: Teaching | None = None,
                    scheme: Scheme | None = None) -> TrainStep:
    """The run's step: the plain :class:`Distiller`, or what its scheme builds."""
    teaching = teaching or build_teaching(cfg, data)
    k, shape = data.splits.num_classes, data.splits.input_shape
    seed_everything(cfg.seed)  # the student's initialisation depends on the seed alone
    student = build_model(cfg.student.name, cfg.student.options, k, shape, cfg.student.weights,
                          cfg.student.init)
    inputs = StepInputs(cfg, data, student, teaching.teacher, teaching.eval_teacher,
                        build_losses(cfg.losses),
                        lambda name, options: build_model(name, options, k, shape))
    return (scheme or Scheme()).build_step(inputs)


def check_names(cfg: RunConfig) -> None:
    """Names that the config sections cannot check themselves (registries above the
    config layer): the optimizer and the schedule."""
    from kdforge.engine.optim import OPTIMIZERS, SCHEDULES

    OPTIMIZERS.get(cfg.optim.name)
    SCHEDULES.get(cfg.schedule.name)


# -- runs --------------------------------------------------------------------------------------

def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
          verbose: bool = True, callbacks=(), lr_scale: float = 1.0) -> RunResult:
    """Train the run described by ``cfg`` (a teacher, a baseline, a distilled student, or a
    scheme).

    Writes ``output_dir/name/``: ``config.yaml`` (resolved), ``model.json``,
    ``metrics.jsonl``, ``checkpoint.safetensors``, ``model.safetensors`` and ``summary.json``
    (final validation and test metrics of the last epoch's model; the test set is used only
    here). A sequence scheme writes one such directory per stage below it, plus
    ``scheme.json`` (see :mod:`kdforge.stages`).
    """
    if not (0 < lr_scale < float("inf")):
        raise ConfigError(f"--lr-scale must be a positive number, got {lr_scale}")
    check_writable(run_dir_of(cfg))  # a file, read-only or full: refused before training
    if cfg.scheme is not None and build_scheme(cfg.scheme).sequence:
        if lr_scale != 1.0:
            raise ConfigError("--lr-scale resumes one run; resume the stage that diverged "
                              "(its own run directory) with it")
        from kdforge.stages import run_sequence

        return run_sequence(cfg, resume=resume, overwrite=overwrite, verbose=verbose)
    run = Run(cfg, resume=resume, overwrite=overwrite, verbose=verbose, callbacks=callbacks)
    run.trainer.resume_lr_scale = lr_scale
    for _ in run.epochs():
        pass
    return run.finish()


class Run:
    """A run built from its config and trained one epoch at a time.

    ``train`` is ``Run(cfg).epochs()`` to the end, then ``finish()``. Driving
    :meth:`epochs` yourself lets several runs take turns epoch by epoch (the store
    benchmark does, so that their throughputs are measured under the same machine load).
    Building it creates (or, with ``resume``, reopens) the run directory; every name,
    option and shape is checked here, before the first step.
    """

    def __init__(self, cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 verbose: bool = True, callbacks=()) -> None:
        check_names(cfg)
        self.cfg = cfg
        self.run_dir = run_dir_of(cfg)
        # Killed before its first checkpoint, a run resumes by starting from scratch.
        self.resume = resume and any((self.run_dir / f).exists()
                                     for f in (CHECKPOINT, LEGACY_CHECKPOINT))
        env = distributed.env_from_torchrun()
        self.is_main = env.is_main
        if resume and env.is_main:  # what killed writes left (.NAME.RANDOM.tmp)
            remove_temporaries(self.run_dir)
        if not resume and any((self.run_dir / f).exists()
                              for f in (CHECKPOINT, LEGACY_CHECKPOINT)):
            if not overwrite:
                raise ConfigError(
                    f"run directory {str(self.run_dir)!r} already holds a run; resume it with "
                    f"--resume {self.run_dir}, choose another name (--set name=...), or "
                    "--overwrite"
                )
            if env.is_main:
                shutil.rmtree(self.run_dir)
        self.scheme = build_scheme(cfg.scheme) if cfg.scheme is not None else None
        if self.scheme is not None and self.scheme.sequence:
            raise ConfigError(f"scheme {self.scheme.name!r} is a sequence of runs; run it with "
                              "kdforge train CONFIG (api.train), not as one Run")
        self.data = data = build_data(cfg)
        if self.scheme is not None:
            self.data = data = self.scheme.adapt_data(cfg, data)
        teaching = build_teaching(cfg, data)
        if self.scheme is not None:  # a generator instead of the training set (data-free)
            teaching = replace(teaching, source=self.scheme.build_source(cfg, data,
                                                                          teaching.source))
        self.distiller = build_distiller(cfg, data, teaching, self.scheme)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / CONFIG_FILE, cfg.to_yaml())
            fault_point("run-start")
        self.trainer = Trainer(
            self.distiller, teaching.source, data.val, num_classes=data.splits.num_classes,
            optim=cfg.optim, schedule=cfg.schedule, train=cfg.train,
            batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
            num_workers=cfg.data.num_workers, seed=cfg.seed, run_dir=self.run_dir,
            callbacks=callbacks, verbose=verbose, title=cfg.name,
        )
        self.train_time = 0.0  # seconds spent inside this run's epochs (not other runs')

    def epochs(self):
        """Train, yielding each epoch's record (see :meth:`Trainer.iter_fit`)."""
        steps = self.trainer.iter_fit(resume=self.resume)
        while True:
            start = time.perf_counter()
            try:
                record = next(steps)
            except StopIteration:
                self.train_time += time.perf_counter() - start
                return
            self.train_time += time.perf_counter() - start
            yield record

    def finish(self) -> RunResult:
        """Test the final model and write ``summary.json`` (after :meth:`epochs` ran out)."""
        trainer = self.trainer
        if trainer.epoch < self.cfg.train.epochs:
            raise ConfigError(
                f"run {self.cfg.name!r} stopped at epoch {trainer.epoch} of "
                f"{self.cfg.train.epochs}; finish its epochs first (or resume it)"
            )
        if self.is_main:  # the model's description, beside the weights the trainer wrote
            save_run_model(self.run_dir, trainer.train_step.eval_module(),
                           name=self.cfg.student.name, options=self.cfg.student.options,
                           num_classes=self.data.splits.num_classes,
                           input_shape=self.data.splits.input_shape)
        test = trainer.evaluate_dataset(self.data.test)
        if self.is_main:  # per-sample test logits for the report (kdforge report)
            from kdforge.engine.predictions import write_predictions
            write_predictions(trainer, self.data.test, self.run_dir)
        summary = summarize(self.cfg, trainer, trainer.history, test,
                            self.train_time + trainer.resumed_seconds,
                            self.data.splits.input_shape)
        if self.scheme is not None:
            summary["scheme"] = {"name": self.scheme.name,
                                 **self.scheme.report(self.cfg, trainer.train_step, trainer,
                                                    self.data)}
            summary["records"] = self.scheme.records(self.cfg, StageResult(self.run_dir, summary))
        if self.is_main:
            write_json(self.run_dir / SUMMARY_FILE, summary)
        return RunResult(self.run_dir, summary)


def summarize(cfg: RunConfig, trainer: Trainer, history: list[dict[str, Any]],
              test: dict[str, float], train_time: float, shape: tuple[int, ...]) -> dict[str, Any]:
    step = trainer.train_step
    student = step.eval_module()
    teacher = getattr(step, "teacher", None)
    last = history[-1] if history else {}
    example = torch.zeros(cfg.data.batch_size, *shape)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "student": cfg.student.name,
        "student_params": count_parameters(student),
        "teacher_params": count_parameters(teacher) if teacher is not None else None,
        "losses": [loss.name for loss in cfg.losses],
        "epochs": trainer.epoch,
        "train_time_s": train_time,
        "samples_per_s": _steady_rate(history),
        "latency_ms": (measure_latency(student, example, device=trainer.device)
                       if cfg.train.latency else None),
        "latency_batch": cfg.data.batch_size,
        "val": {k[4:]: v for k, v in last.items() if k.startswith("val/")},
        "test": test,
    }
    return summary


def _steady_rate(history: list[dict[str, Any]]) -> float:
    """Mean training throughput over the epochs after the first (which warms up)."""
    rates = [r["samples_per_s"] for r in history]
    rates = rates[1:] if len(rates) > 1 else rates
    return sum(rates) / max(1, len(rates))


def resume(run_dir: str | Path, *, verbose: bool = True, lr_scale: float = 1.0) -> RunResult:
    """Continue an interrupted run from its directory (config and checkpoint are read there).

    ``lr_scale`` multiplies every learning rate from the checkpoint on (after a NaN loss:
    resume from the last good checkpoint with e.g. 0.5)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE}); "
                              "a run killed before it wrote its config has nothing to "
                              "resume: start it again with kdforge train CONFIG")
    cfg = load_config(run_dir / CONFIG_FILE, relative_to_file=False)
    cfg = cfg.model_copy(update={"output_dir": str(run_dir.parent), "name": run_dir.name})
    return train(cfg, resume=True, verbose=verbose, lr_scale=lr_scale)


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Evaluate a finished run's final model on ``split`` (``test`` or ``val``)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / WEIGHTS).is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a finished run (needs {CONFIG_FILE} and {WEIGHTS})"
        )
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    cfg = load_config(run_dir / CONFIG_FILE, relative_to_file=False)
    data = build_data(cfg)
    if cfg.scheme is not None:  # the data as the run saw it (cross_modal: its modality)
        data = build_scheme(cfg.scheme).adapt_data(cfg, data)
    dataset = data.test if split == "test" else data.val
    if dataset is None:
        raise ConfigError("this run has no validation split (data.val_fraction was 0)")
    student = load_run_model(run_dir)
    teacher = build_teaching(cfg, data).eval_teacher
    k = data.splits.num_classes
    device = resolve_device(cfg.train.device)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
    loader = eval_loader(dataset, cfg.data.eval_batch_size)
    return evaluate(student, loader, num_classes=k, teacher=teacher, device=device)


def load_run_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist; the run has not finished")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{str(path)!r} is not a readable run summary ({exc}); the run "
                              "directory is damaged: delete the file and rerun (kdforge train "
                              "--resume RUN_DIR finishes it again from the checkpoint)") from None
    if not isinstance(summary, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(summary).__name__}, not a run "
                              "summary; delete it and rerun the run")
    return summary


def require_teacher(cfg: RunConfig) -> None:
    """``kdforge distill`` insists on a teacher and a term that uses it."""
    if not cfg.teachers:
        raise ConfigError("distill needs a 'teacher' section (a run directory or a model "
                          "with weights); to train without one use 'kdforge train'")
    terms = build_losses(cfg.losses)
    if not any(t.needs_teacher for t in terms):
        raise ConfigError(
            f"none of the losses {[c.name for c in cfg.losses]} uses the teacher; add e.g. "
            "{name: kd, weight: 0.9, T: 4}"
        )
