"""One training loop for every run: teachers, baselines and distilled students alike.

The loop only moves batches, steps the optimizer and writes files; what is learned is
decided by the :class:`~kdforge.distill.Distiller` (its teacher and loss terms). Schemes
that change the loop itself drive this trainer rather than copying it.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from kdforge.config import OptimConfig, ScheduleConfig, TrainConfig
from kdforge.core.errors import CheckpointError, ConfigError, NonFiniteLossError
from kdforge.core.outputs import Batch, as_device
from kdforge.data.loaders import eval_loader, first_batch, set_epoch, to_batch, train_loader
from kdforge.data.views import View
from kdforge.distill.distiller import Distiller
from kdforge.engine import distributed
from kdforge.engine.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from kdforge.engine.logging import MetricsLog, ProgressReporter, TensorBoardLog
from kdforge.engine.metrics import evaluate
from kdforge.teachers.stored import StoredTeacher

Callback = Callable[["Trainer", dict[str, Any]], None]

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no GPU is visible; use device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: resuming at an epoch reproduces its randomness."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % 2**63


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "shampoo":
        try:
            from pytorch_optimizer import Shampoo
        except ImportError:
            raise ConfigError(
                "optim.name shampoo needs the pytorch-optimizer package: "
                "pip install 'kdforge[shampoo]'"
            ) from None
        return Shampoo(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig,
              base_lr: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    Linear warm-up from 1% over ``warmup_epochs``; then cosine decay to ``min_lr``, a step
    decay by ``gamma`` at each milestone epoch, or a constant rate.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if cfg.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        floor = cfg.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def _skip_synced_buffers(distiller: Distiller) -> None:
    """Keep DDP from re-broadcasting buffers that terms already keep identical on all ranks.

    A term lists such buffers in ``synced_buffers`` (CRD's memory banks: every rank applies
    the same all-gathered update). Broadcasting them before each forward would be correct
    but would send the whole bank every step.
    """
    names = [f"terms.{i}.{name}" for i, term in enumerate(distiller.terms)
             for name in getattr(term, "synced_buffers", ())]
    ignore = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if names and ignore is not None:
        ignore(distiller, names)


class Trainer:
    """Trains the student of a :class:`Distiller` and writes the run directory.

    Args:
        distiller: student, teacher (or none) and loss terms.
        train_data: a map-style data set of samples (dicts with ``input``/``target``/``index``
            or ``(x, y)`` pairs).
        val_data: held-out data for evaluation every ``train.eval_every`` epochs (optional).
        num_classes: K, for the metrics.
        optim, schedule, train: the corresponding config sections.
        batch_size: the global batch size (split over ``torchrun`` processes).
        num_workers: DataLoader worker processes (0: load in this process).
        run_dir: where files go (``None``: write nothing).
        callbacks: called as ``callback(trainer, record)`` after each epoch.
        verbose: show progress.
        view: the teaching setting applied to every training batch on the device (random
            augmentations drawn from a generator seeded per epoch and rank); None: none.
        eval_teacher: the teacher fidelity is measured against ("auto": the distiller's,
            unless it is a soft-label store, which has no labels for held-out data).

    Files in ``run_dir``: ``metrics.jsonl`` (one record per epoch), ``checkpoint.pt``
    (resumable, written atomically every epoch) and ``model.safetensors`` (final student).
    """

    def __init__(self, distiller: Distiller, train_data: Dataset, val_data: Dataset | None = None,
                 *, num_classes: int, optim: OptimConfig | None = None,
                 schedule: ScheduleConfig | None = None, train: TrainConfig | None = None,
                 batch_size: int = 128, eval_batch_size: int = 512, num_workers: int = 0,
                 seed: int = 0, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), verbose: bool = True, title: str = "",
                 view: View | None = None, eval_teacher: nn.Module | None | str = "auto") -> None:
        self.distiller = distiller
        self.view = view
        if eval_teacher == "auto":  # a stored teacher has no labels for held-out data
            teacher = distiller.teacher
            eval_teacher = None if isinstance(teacher, StoredTeacher) else teacher
        self.eval_teacher = eval_teacher
        self.train_data, self.val_data = train_data, val_data
        self.num_classes = num_classes
        self.optim_cfg = optim or OptimConfig()
        self.schedule_cfg = schedule or ScheduleConfig()
        self.cfg = train or TrainConfig()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.verbose, self.title = verbose, title
        self.env = distributed.env_from_torchrun()
        self.device = resolve_device(self.cfg.device, self.env.local_rank)
        self.autocast_dtype = _AUTOCAST[self.cfg.precision]
        if self.cfg.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision fp16 needs CUDA; on the CPU use bf16 or fp32")
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.global_step = 0

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self, pretrain: bool = True) -> None:
        self.env = distributed.init(self.device)
        seed_everything(self.seed)
        # a view may move its CPU work into the loader (a store replay reads its records there)
        prepared = None if self.view is None else self.view.loader_dataset(self.train_data,
                                                                           self.seed)
        self.loader = train_loader(prepared if prepared is not None else self.train_data,
                                   self.batch_size, seed=self.seed, rank=self.env.rank,
                                   world_size=self.env.world_size, num_workers=self.num_workers,
                                   pin_memory=self.device.type == "cuda",
                                   keyed=prepared is not None)
        self.val_loader = None
        if self.val_data is not None:
            self.val_loader = eval_loader(self.val_data, self.eval_batch_size, rank=self.env.rank,
                                          world_size=self.env.world_size,
                                          num_workers=self.num_workers)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training set is empty or smaller than one batch")

        d = self.distiller.to(self.device)
        if self.eval_teacher is not None:
            self.eval_teacher.to(self.device)
        if self.cfg.channels_last:
            d.student.to(memory_format=torch.channels_last)
        # Shapes are checked, and learnable adapters built, before the optimizer exists.
        for term in d.terms:
            term.bind_dataset_size(len(self.train_data))  # type: ignore[arg-type]
        self.view_generator = torch.Generator(device=self.device)
        if not d.prepared:
            probe = as_device(first_batch(self.train_data, min(8, self.batch_size)), self.device)
            d.prepare(self._prepare_inputs(self._view(probe)))
        if pretrain:
            d.pretrain_terms(self._whole_train_set)
        if self.cfg.compile:
            d.student.compile()
        self.params = list(d.trainable_parameters())
        self.optimizer = build_optimizer(self.params, self.optim_cfg)
        base_lr = self.optim_cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.steps_per_epoch, self.cfg.epochs, self.schedule_cfg,
                                   base_lr),
        )
        use_scaler = self.cfg.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.model: nn.Module = d
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            _skip_synced_buffers(d)
            self.model = DistributedDataParallel(d, device_ids=ids)

    def _whole_train_set(self):
        """Every training batch in a fixed order, on every rank (for term pretraining;
        the distributed wrapper then copies rank 0's result to all ranks)."""
        loader = eval_loader(self.train_data, self.batch_size, num_workers=self.num_workers)
        for raw in loader:
            yield self._prepare_inputs(as_device(to_batch(raw), self.device))

    def _view(self, batch: Batch) -> Batch:
        return batch if self.view is None else self.view(batch, self.view_generator)

    def _prepare_inputs(self, batch: Batch) -> Batch:
        if self.cfg.channels_last and batch.inputs.dim() == 4:
            batch.inputs = batch.inputs.contiguous(memory_format=torch.channels_last)
            if batch.teacher_inputs is not None:
                batch.teacher_inputs = batch.teacher_inputs.contiguous(
                    memory_format=torch.channels_last)
        return batch

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "student": self.distiller.student.state_dict(),
            "terms": self.distiller.terms.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epochs": self.cfg.epochs,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epochs") != self.cfg.epochs or state.get("seed") != self.seed:
            raise CheckpointError(
                f"the checkpoint was written by a run of {state.get('epochs')} epochs with seed "
                f"{state.get('seed')}; this run has {self.cfg.epochs} epochs and seed "
                f"{self.seed}. Resume with the run's own config (its config.yaml)."
            )
        try:
            self.distiller.student.load_state_dict(state["student"])
            self.distiller.terms.load_state_dict(state["terms"])
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint does not fit this model: {exc}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])

    def _save(self) -> None:
        if self.run_dir is None or not self.env.is_main:
            return
        save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

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
        with self._run_settings():
            self._setup(pretrain=not resume)
            log = board = None
            if self.run_dir is not None and self.env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                log = MetricsLog(self.run_dir)
                board = TensorBoardLog(self.run_dir) if self.cfg.tensorboard else None
            if resume:
                if self.run_dir is None:
                    raise CheckpointError("resume needs a run directory")
                self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT))
                if log is not None:
                    log.truncate_after(self.epoch)
            elif log is not None and log.path.exists():
                log.path.unlink()
        progress = ProgressReporter(self.verbose and self.env.is_main, self.cfg.epochs,
                                    self.steps_per_epoch, self.title)
        try:
            while self.epoch < self.cfg.epochs:
                with self._run_settings():
                    record = self._epoch(progress, log, board)
                yield record
        finally:
            progress.close()
            if board is not None:
                board.close()
        if self.run_dir is not None and self.env.is_main:
            save_weights(self.distiller.student, self.run_dir / WEIGHTS)
        distributed.barrier()

    @contextlib.contextmanager
    def _run_settings(self) -> Iterator[None]:
        """This run's process-wide torch settings, restored on exit.

        ``train.deterministic`` selects deterministic kernels, but leaves torch's
        ``fill_uninitialized_memory`` (which it switches on with them) off: filling every
        new tensor with NaN is a debugging aid, not a condition of determinism, and it cost
        a third of the throughput of a small CIFAR ResNet on an H100 (18k vs 27k samples/s).
        """
        fill = torch.utils.deterministic
        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled(),
                    torch.backends.cudnn.benchmark, fill.fill_uninitialized_memory)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            fill.fill_uninitialized_memory = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.backends.cudnn.benchmark = previous[2]
            fill.fill_uninitialized_memory = previous[3]

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
            callback(self, record)
        return record

    def _train_epoch(self, progress: ProgressReporter) -> dict[str, Any]:
        seed = epoch_seed(self.seed, self.epoch, self.env.rank)
        seed_everything(seed)
        self.view_generator.manual_seed(seed + 1)
        set_epoch(self.loader, self.epoch)
        self.model.train()
        sums: dict[str, Tensor] = {}
        seen = torch.zeros((), device=self.device)
        progress.start_epoch(self.epoch)
        start = time.perf_counter()
        pending = 0
        for i, raw in enumerate(self.loader):
            self.distiller.progress = self.epoch + i / self.steps_per_epoch
            batch = self._prepare_inputs(self._view(as_device(to_batch(raw), self.device)))
            with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                result = self.model(batch.inputs, batch.targets,
                                    teacher_inputs=batch.teacher_inputs, index=batch.index,
                                    view=batch.view)
            loss = result.loss
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1

            n = batch.size
            seen += n
            for name, value in {"loss": loss, **result.parts}.items():
                contribution = value.detach().float() * n
                sums[name] = sums[name] + contribution if name in sums else contribution
            pending += 1
            if pending == self.cfg.log_every or i + 1 == self.steps_per_epoch:
                self._check_finite(sums, i)
                elapsed = time.perf_counter() - start
                means = {k: float(v) / float(seen) for k, v in sums.items()}
                progress.update(pending, means, float(seen) / max(elapsed, 1e-9))
                pending = 0
        elapsed = time.perf_counter() - start
        totals = torch.stack([seen, *sums.values()])
        distributed.all_reduce_sum(totals)
        count = float(totals[0])
        record: dict[str, Any] = {
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": elapsed,
            "samples_per_s": count / max(elapsed, 1e-9),
        }
        for name, total in zip(sums, totals[1:], strict=True):
            record[f"train/{name}"] = float(total) / count
        return record

    def _check_finite(self, sums: dict[str, Tensor], step: int) -> None:
        bad = [k for k, v in sums.items() if not torch.isfinite(v)]
        if bad:
            parts = [k for k in bad if k != "loss"] or ["loss"]
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {self.epoch + 1}, step {step + 1} "
                f"(non-finite parts: {', '.join(parts)}). The last good checkpoint is kept. "
                "Lower optim.lr, set train.grad_clip (e.g. 5), or use train.precision=fp32."
            )

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Metrics of the student (and fidelity to the teacher) on ``loader``."""
        return evaluate(self.distiller.student, loader, num_classes=self.num_classes,
                        teacher=self.eval_teacher, device=self.device,
                        autocast_dtype=self.autocast_dtype)

    def evaluate_dataset(self, dataset: Dataset) -> dict[str, float]:
        loader = eval_loader(dataset, self.eval_batch_size, rank=self.env.rank,
                             world_size=self.env.world_size, num_workers=self.num_workers)
        return self.evaluate(loader)
