"""One training loop for every run: teachers, baselines, distilled students and schemes.

The loop only moves batches, calls the :class:`~kdforge.core.step.TrainStep` for each of
its phases, hands the losses to the :class:`~kdforge.engine.updater.Updater` and writes
files. What is learned is the step's business (the distiller's teacher and loss terms, a
scheme's peers or generator); where batches come from is the
:class:`~kdforge.core.source.BatchSource`'s. The engine knows nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from kdforge.config import OptimConfig, ScheduleConfig, TrainConfig
from kdforge.core.errors import CheckpointError, ConfigError, NonFiniteLossError
from kdforge.core.faults import fault_point
from kdforge.core.outputs import StepResult
from kdforge.core.source import BatchSource, SourceContext
from kdforge.core.step import StepContext, StepRecord, TrainStep, check_groups, module_state
from kdforge.data.loaders import eval_loader
from kdforge.data.sources import as_source
from kdforge.data.views import View
from kdforge.engine import distributed
from kdforge.engine.callbacks import as_callbacks, overrides_on_step
from kdforge.engine.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from kdforge.engine.logging import MetricsLog, ProgressReporter, TensorBoardLog
from kdforge.engine.metrics import evaluate
from kdforge.engine.recovery import ADVICE, Recovery, check_weights, rescale
from kdforge.engine.runtime import (
    AUTOCAST,
    epoch_seed,
    resolve_device,
    run_settings,
    seed_everything,
)
from kdforge.engine.updater import Updater


class Trainer:
    """Trains a :class:`TrainStep` (a ``Distiller``, or a scheme) and writes the run directory.

    Args:
        step: what is trained and how one batch becomes losses.
        train_data: a map-style data set (dicts with ``input``/``target``/``index`` or
            ``(x, y)`` pairs) or a :class:`BatchSource` (a generator with no data set, a
            store replay).
        val_data: held-out data evaluated every ``train.eval_every`` epochs (optional).
        num_classes: K, for the metrics.
        optim, schedule, train: the run's config sections (a group may override the first
            two).
        batch_size: the global batch size (split over ``torchrun`` processes).
        num_workers: DataLoader worker processes (0: load in this process).
        run_dir: where files go (``None``: write nothing).
        callbacks: functions called as ``f(trainer, record)`` after each epoch, or
            :class:`~kdforge.engine.callbacks.Callback` objects (``on_step``, ``on_epoch``).
        view: the teaching setting applied to each training batch of a data set.
        eval_teacher: the teacher fidelity is measured against; ``"auto"``: the step's.

    Files in ``run_dir``: ``metrics.jsonl`` (one record per epoch), ``checkpoint.safetensors``
    (resumable, written atomically, no pickle) and ``model.safetensors`` (the evaluated
    module's weights; other trained modules as ``model-NAME.safetensors``).
    """

    def __init__(self, step: TrainStep, train_data: Dataset | BatchSource,
                 val_data: Dataset | None = None, *, num_classes: int,
                 optim: OptimConfig | None = None, schedule: ScheduleConfig | None = None,
                 train: TrainConfig | None = None, batch_size: int = 128,
                 eval_batch_size: int = 512, num_workers: int = 0, seed: int = 0,
                 run_dir: str | Path | None = None, callbacks: Sequence[Any] = (),
                 verbose: bool = True, title: str = "", view: View | None = None,
                 eval_teacher: nn.Module | None | str = "auto") -> None:
        if not isinstance(step, TrainStep):
            raise ConfigError(f"the trainer drives a TrainStep (a Distiller or a scheme), got "
                              f"{type(step).__name__}")
        self.train_step = step
        self.source = as_source(train_data, batch_size, view=view, num_workers=num_workers)
        self.eval_teacher = step.eval_teacher if eval_teacher == "auto" else eval_teacher
        self.val_data = val_data
        self.num_classes = num_classes
        self.optim_cfg = optim or OptimConfig()
        self.schedule_cfg = schedule or ScheduleConfig()
        self.cfg = train or TrainConfig()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = as_callbacks(callbacks)
        self._step_callbacks = [cb for cb in self.callbacks if overrides_on_step(cb)]
        self.verbose, self.title = verbose, title
        self.env = distributed.env_from_torchrun()
        self.device = resolve_device(self.cfg.device, self.env.local_rank)
        self.autocast_dtype = AUTOCAST[self.cfg.precision]
        if self.cfg.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision fp16 needs CUDA; on the CPU use bf16 or fp32")
        self.history: list[dict[str, Any]] = []
        self.resumed_seconds = 0.0  # training time of the epochs before a resumed checkpoint
        self.lr_scale = 1.0  # learning rates x this (lowered after a non-finite loss)
        self.resume_lr_scale = 1.0  # applied once on resume (kdforge train --lr-scale)
        self.epoch = 0
        self.global_step = 0

    @property
    def distiller(self) -> TrainStep:
        """The step being trained (its name from when every step was a ``Distiller``)."""
        return self.train_step

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self, pretrain: bool = True) -> None:
        self.env = distributed.init(self.device)
        seed_everything(self.seed)
        self.source.bind(SourceContext(self.device, self.seed, self.env.rank,
                                       self.env.world_size, self.cfg.channels_last))
        self.val_loader = None
        if self.val_data is not None:
            self.val_loader = eval_loader(self.val_data, self.eval_batch_size, rank=self.env.rank,
                                          world_size=self.env.world_size,
                                          num_workers=self.num_workers)
        self.steps_per_epoch = len(self.source)
        if self.steps_per_epoch == 0:
            raise ConfigError("the batch source yields no batch per epoch")
        step = self.train_step.to(self.device)
        if self.eval_teacher is not None:
            self.eval_teacher.to(self.device)
        modules = step.trained_modules()
        if self.cfg.channels_last:
            for module in modules.values():
                module.to(memory_format=torch.channels_last)
        # Shapes are checked, and lazy parameters built, before any optimizer exists.
        context = StepContext(self.source.num_samples, self.steps_per_epoch, self.cfg.epochs,
                              ordered_batches=self.source.ordered, pretrain=pretrain)
        step.prepare(self.source.probe(self.batch_size), context)
        if self.cfg.compile:
            for module in modules.values():
                module.compile()
        groups = check_groups(step)
        self.phases = [group.name for group in groups]
        self.every = {group.name: group.every for group in groups}
        self.updater = Updater(groups, optim=self.optim_cfg,
                               schedule=self.schedule_cfg, steps_per_epoch=self.steps_per_epoch,
                               epochs=self.cfg.epochs, device_type=self.device.type,
                               fp16=self.cfg.precision == "fp16", grad_clip=self.cfg.grad_clip)
        self.model: nn.Module = step
        if self.env.distributed:
            self.model = self._wrap_distributed(step)

    def _wrap_distributed(self, step: TrainStep) -> nn.Module:
        """``DistributedDataParallel`` over the whole step. Buffers the step keeps identical
        on every rank itself (CRD's memory banks) are not re-broadcast before each forward:
        that would be correct but would send the whole bank every step."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        ignore = getattr(DistributedDataParallel,
                         "_set_params_and_buffers_to_ignore_for_model", None)
        if step.synced_buffers() and ignore is not None:
            ignore(step, step.synced_buffers())
        return DistributedDataParallel(step, device_ids=ids,
                                       find_unused_parameters=step.find_unused_parameters)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "epochs": self.cfg.epochs,
            "seed": self.seed,
            "modules": {name: module.state_dict()
                        for name, module in module_state(self.train_step.state_modules())},
            "updater": self.updater.state_dict(),
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epochs") != self.cfg.epochs or state.get("seed") != self.seed:
            raise CheckpointError(
                f"the checkpoint was written by a run of {state.get('epochs')} epochs with seed "
                f"{state.get('seed')}; this run has {self.cfg.epochs} epochs and seed "
                f"{self.seed}. Resume with the run's own config (its config.yaml)."
            )
        modules = dict(module_state(self.train_step.state_modules()))
        if sorted(state["modules"]) != sorted(modules):
            raise CheckpointError(f"the checkpoint holds modules {sorted(state['modules'])}, "
                                  f"this step has {sorted(modules)}")
        try:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint does not fit this model: {exc}") from None
        self.updater.load_state_dict(state["updater"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.lr_scale = float(state.get("lr_scale", 1.0))

    def _save(self) -> None:
        check_weights(self)  # a checkpoint never holds NaN weights: the last good one stays
        if self.run_dir is None or not self.env.is_main:
            return
        save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

    def _save_weights(self) -> None:
        modules = dict(module_state(self.train_step.trained_modules()))
        evaluated = self.train_step.eval_module()
        for name, module in modules.items():
            main = module is getattr(evaluated, "_orig_mod", evaluated)
            save_weights(module, self.run_dir / (WEIGHTS if main else f"model-{name}.safetensors"))

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``train.epochs`` epochs (from the checkpoint in ``run_dir`` if ``resume``).

        Returns the per-epoch records (also in ``metrics.jsonl``).
        """
        for _ in self.iter_fit(resume):
            pass
        return self.history

    def iter_fit(self, resume: bool = False) -> Iterator[dict[str, Any]]:
        """:meth:`fit` one epoch at a time: yields each epoch's record after it is logged
        and checkpointed, so a caller can interleave runs or stop early (closing the
        generator keeps the last checkpoint). The final weights are written when the
        generator is exhausted. Settings that are process-wide (deterministic algorithms)
        are set for each epoch and restored before the record is yielded.
        """
        with run_settings(self.cfg.deterministic):
            self._setup(pretrain=not resume)
            log = board = None
            if self.run_dir is not None and self.env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                log = MetricsLog(self.run_dir)
                board = TensorBoardLog.open(self.run_dir, self.cfg.tensorboard)
            if resume:
                if self.run_dir is None:
                    raise CheckpointError("resume needs a run directory")
                self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT))
                if self.resume_lr_scale != 1.0:
                    rescale(self, self.resume_lr_scale)
                if log is not None:  # the epochs before the checkpoint, as logged
                    log.truncate_after(self.epoch)
                    self.history = log.read()
                    self.resumed_seconds = sum(r.get("epoch_time_s", 0.0) for r in self.history)
            elif log is not None and log.path.exists():
                log.path.unlink()
        progress = ProgressReporter(self.verbose and self.env.is_main, self.cfg.epochs,
                                    self.steps_per_epoch, self.title)
        recovery = Recovery(self)
        recovery.snapshot()
        try:
            while self.epoch < self.cfg.epochs:
                try:
                    with run_settings(self.cfg.deterministic):
                        record = self._epoch(progress, log, board)
                except NonFiniteLossError as error:
                    recovery.restart(error, log)  # or re-raised
                    continue
                yield record
        finally:
            progress.close()
            if board is not None:
                board.close()
        if self.run_dir is not None and self.env.is_main:
            self._save_weights()
        distributed.barrier()

    def _epoch(self, progress: ProgressReporter, log: MetricsLog | None,
               board: TensorBoardLog | None) -> dict[str, Any]:
        """Train one epoch, then validate, log, checkpoint and call the callbacks."""
        record = self._train_epoch(progress)
        self.epoch += 1
        record = {"epoch": self.epoch, **record}
        last = self.epoch == self.cfg.epochs
        if self.val_loader is not None and (self.epoch % self.cfg.eval_every == 0 or last):
            record.update({f"val/{k}": v for k, v in self.evaluate(self.val_loader).items()})
        self.history.append(record)
        if log is not None:
            log.append(record)
        if board is not None:
            board.append(record)
        if self.epoch % self.cfg.checkpoint_every == 0 or last:
            self._save()
        progress.end_epoch(record)
        for callback in self.callbacks:
            callback.on_epoch(self, record)
        return record

    def _update(self, batch, index: int) -> dict[str, StepResult]:
        """Every phase due at batch ``index``: the step's loss, then the updater's step."""
        results: dict[str, StepResult] = {}
        for phase in self.phases:
            if index % self.every[phase]:
                continue
            with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                result = self.model(batch, phase=phase)
            self.updater.update(phase, result.loss)
            results[phase] = result
        return results

    def _logged(self, results: dict[str, StepResult]) -> dict[str, Tensor]:
        """The values a step logs: ``loss`` and its parts; prefixed by phase if several."""
        if len(self.phases) == 1:
            (result,) = results.values()
            return {"loss": result.loss, **result.parts}
        return {f"{phase}/{name}": value for phase, result in results.items()
                for name, value in {"loss": result.loss, **result.parts}.items()}

    def _train_epoch(self, progress: ProgressReporter) -> dict[str, Any]:
        seed = epoch_seed(self.seed, self.epoch, self.env.rank)
        seed_everything(seed)
        self.model.train()
        sums: dict[str, Tensor] = {}
        counts: dict[str, Tensor] = {}  # samples behind each sum (a phase may skip batches)
        seen = torch.zeros((), device=self.device)
        progress.start_epoch(self.epoch)
        start = time.perf_counter()
        pending = 0
        for i, batch in enumerate(self.source.epoch(self.epoch, seed)):
            self.train_step.progress = self.epoch + i / self.steps_per_epoch
            results = self._update(batch, i)
            fault_point("step")  # KDFORGE_FAULT=step:N kills here (crash tests; else free)
            self.global_step += 1
            n = batch.size
            seen += n
            for name, value in self._logged(results).items():
                contribution = value.detach().float() * n
                sums[name] = sums[name] + contribution if name in sums else contribution
                counts[name] = counts.get(name, 0) + n
            if self._step_callbacks:
                step_record = StepRecord(self.epoch, i, self.global_step, n, results)
                for callback in self._step_callbacks:
                    callback.on_step(self, step_record)
            pending += 1
            if pending == self.cfg.log_every or i + 1 == self.steps_per_epoch:
                self._check_finite(sums, i)
                elapsed = time.perf_counter() - start
                means = {k: float(v) / counts[k] for k, v in sums.items()}
                progress.update(pending, means, float(seen) / max(elapsed, 1e-9))
                pending = 0
        elapsed = time.perf_counter() - start
        names = list(sums)
        totals = torch.stack([seen, *sums.values(),
                              *(torch.tensor(float(counts[k]), device=self.device)
                                for k in names)])
        distributed.all_reduce_sum(totals)
        count = float(totals[0])
        record: dict[str, Any] = {
            "step": self.global_step,
            "lr": self.updater.lr(),
            "epoch_time_s": elapsed,
            "samples_per_s": count / max(elapsed, 1e-9),
        }
        if len(self.phases) > 1:
            record.update({f"lr/{phase}": self.updater.lr(phase) for phase in self.phases})
        k = len(names)
        for name, total, samples in zip(names, totals[1:1 + k], totals[1 + k:], strict=True):
            record[f"train/{name}"] = float(total) / float(samples)
        return record

    def _check_finite(self, sums: dict[str, Tensor], step: int) -> None:
        bad = [k for k, v in sums.items() if not torch.isfinite(v)]
        if bad:
            parts = [k for k in bad if not k.endswith("loss")] or bad
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {self.epoch + 1}, step {step + 1} "
                f"(non-finite parts: {', '.join(parts)}). The last good checkpoint is kept. "
                + ADVICE
            )

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Metrics of the evaluated module (and fidelity to the teacher) on ``loader``."""
        return evaluate(self.train_step.eval_module(), loader, num_classes=self.num_classes,
                        teacher=self.eval_teacher, device=self.device,
                        autocast_dtype=self.autocast_dtype)

    def evaluate_dataset(self, dataset: Dataset) -> dict[str, float]:
        loader = eval_loader(dataset, self.eval_batch_size, rank=self.env.rank,
                             world_size=self.env.world_size, num_workers=self.num_workers)
        return self.evaluate(loader)


__all__ = ["Trainer", "resolve_device", "seed_everything"]
