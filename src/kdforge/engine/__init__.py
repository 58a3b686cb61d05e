"""The training engine: one Trainer driving TrainSteps, the updater, optimizer and schedule
registries, checkpoints, metrics and multi-process support."""

from kdforge.engine.callbacks import Callback
from kdforge.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from kdforge.engine.metrics import METRIC_DOCS, Evaluator, evaluate, measure_latency
from kdforge.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor
from kdforge.engine.runtime import resolve_device
from kdforge.engine.trainer import Trainer
from kdforge.engine.updater import Updater

__all__ = ["METRIC_DOCS", "OPTIMIZERS", "SCHEDULES", "Callback", "Evaluator", "Trainer",
           "Updater", "build_optimizer", "evaluate", "load_checkpoint", "lr_factor",
           "measure_latency", "resolve_device", "save_checkpoint", "save_weights"]
