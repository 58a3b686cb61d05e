"""What the CLI does, as plain functions: build a run from its config, train, evaluate, list.

Everything is built, and every name, option and shape checked, before the first training
step, so a bad config fails in seconds with a message saying what to fix.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.config import LossConfig, RunConfig, TeacherConfig, load_config
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.data.datasets import DataSplits, load_dataset, split_train_val
from kdforge.data.loaders import eval_loader
from kdforge.data.views import View, build_view
from kdforge.distill.distiller import Distiller
from kdforge.engine import distributed
from kdforge.engine.checkpoint import CHECKPOINT, WEIGHTS, write_json
from kdforge.engine.metrics import evaluate, measure_latency
from kdforge.engine.trainer import Trainer, resolve_device, seed_everything
from kdforge.losses.base import LossTerm, build_loss
from kdforge.models import count_parameters, create_model
from kdforge.teachers.base import Teacher
from kdforge.teachers.ensemble import EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from kdforge.teachers.store import SoftLabelStore
from kdforge.teachers.stored import StoredTeacher, StoreView

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.json"
SUMMARY_FILE = "summary.json"
#: The validation split is carved from train with this fixed seed, so runs that differ in
#: seed differ only in initialisation and data order, never in what they are validated on.
VAL_SPLIT_SEED = 0


@dataclass
class Data:
    splits: DataSplits
    train: Any
    val: Any
    test: Any


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


# -- building blocks ---------------------------------------------------------------------------

def build_data(cfg: RunConfig) -> Data:
    splits = load_dataset(cfg.data.name, **cfg.data.options)
    train, val = split_train_val(splits.train, cfg.data.val_fraction, VAL_SPLIT_SEED)
    return Data(splits, train, val, splits.test)


def build_model(name: str, options: dict[str, Any], num_classes: int,
                input_shape: tuple[int, ...], weights: str | None = None) -> nn.Module:
    return create_model(name, num_classes, input_shape, weights=weights, **options)


def build_teacher(cfg: RunConfig, num_classes: int, input_shape: tuple[int, ...]) -> Teacher | None:
    if any(t.store is not None for t in cfg.teachers) and len(cfg.teachers) > 1:
        raise ConfigError("a soft-label store is a whole teacher: store ensemble labels in one "
                          "store (kdforge soft-labels with a list of teachers) instead")
    members = [_one_teacher(t, num_classes, input_shape) for t in cfg.teachers]
    if not members:
        return None
    if len(members) == 1:
        return members[0]
    return EnsembleTeacher(members, combine=cfg.ensemble, weights=cfg.ensemble_weights)


def _one_teacher(t: TeacherConfig, num_classes: int, input_shape: tuple[int, ...]) -> Teacher:
    if t.store is not None:
        return StoredTeacher(SoftLabelStore(t.store), fill=t.fill)
    if t.run is not None:
        run = Path(t.run)
        meta_path = run / MODEL_FILE
        if not meta_path.is_file() or not (run / WEIGHTS).is_file():
            raise ConfigError(
                f"teacher run {str(run)!r} has no {MODEL_FILE} and {WEIGHTS}; train the teacher "
                "first (kdforge train) and give its run directory"
            )
        meta = json.loads(meta_path.read_text())
        model = build_model(meta["name"], meta["options"], meta["num_classes"],
                            tuple(meta["input_shape"]), str(run / WEIGHTS))
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


def build_run_view(cfg: RunConfig, num_classes: int, input_shape: tuple[int, ...],
                   teacher: Teacher | None = None, dataset: Any = None) -> View | None:
    """The run's view; for a store, its replay (``dataset``: the training set, from which
    replaying mixed views loads the mixing partners)."""
    if isinstance(teacher, StoredTeacher):
        if cfg.view is not None:
            raise ConfigError("a run that learns from a soft-label store replays the store's own "
                              "views; remove the 'view' section")
        return StoreView(teacher.store, input_shape, repeats=cfg.teachers[0].repeats,
                         dataset=dataset, fill=teacher.fill)
    if cfg.view is None:
        return None
    return build_view(cfg.view.name, input_shape, num_classes, **cfg.view.options)


def check_store(cfg: RunConfig, data: Data, teacher: Teacher | None) -> Teacher | None:
    """Refuse a store that does not fit the run (before training); return the teacher that
    evaluation uses for fidelity metrics: the store's own teacher run when it exists."""
    if not isinstance(teacher, StoredTeacher):
        return teacher
    store = teacher.store
    store.check_compatible(num_samples=len(data.train), num_classes=data.splits.num_classes,
                           dataset=cfg.data.name)
    if list(data.splits.input_shape) != list(store.meta.get("input_shape", data.splits.input_shape)):
        raise ConfigError(f"the store {store.path} was made for inputs of shape "
                          f"{store.meta['input_shape']}, the run has {data.splits.input_shape}")
    if cfg.teachers[0].verify:
        store.verify()
    runs = [t.get("run") for t in store.meta.get("teacher", []) if isinstance(t, dict)]
    if len(runs) == 1 and runs[0] and (Path(runs[0]) / WEIGHTS).is_file():
        k, shape = data.splits.num_classes, data.splits.input_shape
        return _one_teacher(TeacherConfig(run=runs[0]), k, shape)
    return None


def build_distiller(cfg: RunConfig, data: Data) -> Distiller:
    k, shape = data.splits.num_classes, data.splits.input_shape
    teacher = build_teacher(cfg, k, shape)
    seed_everything(cfg.seed)  # the student's initialisation depends on the seed alone
    student = build_model(cfg.student.name, cfg.student.options, k, shape, cfg.student.weights)
    return Distiller(student, teacher, build_losses(cfg.losses))


# -- runs --------------------------------------------------------------------------------------

def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
          verbose: bool = True, callbacks=()) -> RunResult:
    """Train the run described by ``cfg`` (a teacher, a baseline or a distilled student).

    Writes ``output_dir/name/``: ``config.yaml`` (resolved), ``model.json``,
    ``metrics.jsonl``, ``checkpoint.pt``, ``model.safetensors`` and ``summary.json`` (final
    validation and test metrics of the last epoch's model; the test set is used only here).
    """
    run = Run(cfg, resume=resume, overwrite=overwrite, verbose=verbose, callbacks=callbacks)
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
        self.cfg, self.resume = cfg, resume
        self.run_dir = run_dir_of(cfg)
        env = distributed.env_from_torchrun()
        self.is_main = env.is_main
        if not resume and (self.run_dir / CHECKPOINT).exists():
            if not overwrite:
                raise ConfigError(
                    f"run directory {str(self.run_dir)!r} already holds a run; resume it with "
                    f"--resume {self.run_dir}, choose another name (--set name=...), or "
                    "--overwrite"
                )
            if env.is_main:
                shutil.rmtree(self.run_dir)
        self.data = data = build_data(cfg)
        distiller = build_distiller(cfg, data)
        k, shape = data.splits.num_classes, data.splits.input_shape
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(cfg.to_yaml())
            write_json(self.run_dir / MODEL_FILE,
                       {"name": cfg.student.name, "options": cfg.student.options,
                        "num_classes": k, "input_shape": list(shape)})
        view = build_run_view(cfg, k, shape, distiller.teacher, dataset=data.train)
        eval_teacher = check_store(cfg, data, distiller.teacher)
        self.trainer = Trainer(
            distiller, data.train, data.val, num_classes=k, optim=cfg.optim,
            schedule=cfg.schedule, train=cfg.train, batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
            seed=cfg.seed, run_dir=self.run_dir, callbacks=callbacks, verbose=verbose,
            title=cfg.name, view=view, eval_teacher=eval_teacher,
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
        test = trainer.evaluate_dataset(self.data.test)
        summary = summarize(self.cfg, trainer, trainer.history, test, self.train_time,
                            self.data.splits.input_shape)
        if self.is_main:
            write_json(self.run_dir / SUMMARY_FILE, summary)
        return RunResult(self.run_dir, summary)


def summarize(cfg: RunConfig, trainer: Trainer, history: list[dict[str, Any]],
              test: dict[str, float], train_time: float, shape: tuple[int, ...]) -> dict[str, Any]:
    d = trainer.distiller
    last = history[-1] if history else {}
    example = torch.zeros(cfg.data.batch_size, *shape)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "student": cfg.student.name,
        "student_params": count_parameters(d.student),
        "teacher_params": count_parameters(d.teacher) if d.teacher is not None else None,
        "losses": [loss.name for loss in cfg.losses],
        "epochs": trainer.epoch,
        "train_time_s": train_time,
        "samples_per_s": _steady_rate(history),
        "latency_ms": measure_latency(d.student, example, device=trainer.device),
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


def resume(run_dir: str | Path, *, verbose: bool = True) -> RunResult:
    """Continue an interrupted run from its directory (config and checkpoint are read there)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    cfg = load_config(run_dir / CONFIG_FILE)
    cfg = cfg.model_copy(update={"output_dir": str(run_dir.parent), "name": run_dir.name})
    return train(cfg, resume=True, verbose=verbose)


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Evaluate a finished run's final model on ``split`` (``test`` or ``val``)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / WEIGHTS).is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a finished run (needs {CONFIG_FILE} and {WEIGHTS})"
        )
    cfg = load_config(run_dir / CONFIG_FILE)
    data = build_data(cfg)
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    dataset = data.test if split == "test" else data.val
    if dataset is None:
        raise ConfigError("this run has no validation split (data.val_fraction was 0)")
    k, shape = data.splits.num_classes, data.splits.input_shape
    student = build_model(cfg.student.name, cfg.student.options, k, shape, str(run_dir / WEIGHTS))
    teacher = check_store(cfg, data, build_teacher(cfg, k, shape))
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
    return json.loads(path.read_text())


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


def list_registered(kind: str) -> list[tuple[str, str, str]]:
    """``(name, source, summary)`` of every registered model, loss or data set."""
    from kdforge.data.datasets import DATASETS
    from kdforge.data.views import VIEWS
    from kdforge.losses.base import LOSSES
    from kdforge.models import MODELS

    registry = {"models": MODELS, "losses": LOSSES, "datasets": DATASETS, "views": VIEWS}.get(kind)
    if registry is None:
        raise ConfigError(f"unknown kind {kind!r}; choose models, losses, datasets or views")
    rows = [(e.name, e.source, e.summary) for e in registry.entries()]
    if kind == "models":
        rows += [("timm:NAME", "Wightman, PyTorch Image Models", "any timm architecture by name"),
                 ("torchvision:NAME", "torchvision", "any torchvision classification model")]
    return rows


def list_layers(model: str | None, overrides: list[str]) -> list[str]:
    """Module names (for feature taps) of a model, with each module's type."""
    import yaml

    from kdforge.models import layer_names

    if not model:
        raise ConfigError("kdforge list layers needs a MODEL name, e.g. resnet8")
    options: dict[str, Any] = {"num_classes": 10, "input_shape": [3, 32, 32]}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like key=value")
        options[key] = yaml.safe_load(value)
    k, shape = options.pop("num_classes"), tuple(options.pop("input_shape"))
    net = build_model(model, options, k, shape)
    modules = dict(net.named_modules())
    return [f"{name:32s} {type(modules[name]).__name__}" for name in layer_names(net)]
