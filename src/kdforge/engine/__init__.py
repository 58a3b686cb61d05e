"""The training engine: one Trainer, checkpoints, metrics, multi-process support."""

from kdforge.engine.checkpoint import save_weights
from kdforge.engine.metrics import METRIC_DOCS, Evaluator, evaluate, measure_latency
from kdforge.engine.trainer import Trainer, lr_factor, resolve_device

__all__ = ["METRIC_DOCS", "Evaluator", "Trainer", "evaluate", "lr_factor",
           "measure_latency", "resolve_device", "save_weights"]
