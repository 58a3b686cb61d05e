"""Timing for the benchmarks: medians of timed calls, the rates of a teacher forward and a
student step, epoch rates from a run's metrics, and orders in which runs take turns."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import to_outputs
from kdforge.data.loaders import first_batch
from kdforge.engine.logging import METRICS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(run: Callable[[], None], items: int, repeats: int, device: torch.device,
                warmup: Callable[[], None] | None = None) -> float:
    """Median over ``repeats`` of ``items / seconds`` of one call of ``run`` (perf_counter),
    after one call of ``warmup`` (default: ``run``)."""
    (warmup or run)()
    rates = []
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        rates.append(items / max(time.perf_counter() - start, 1e-9))
    return float(statistics.median(rates))


def generation_batches(num_samples: int, views: int, batch_size: int,
                       samples_per_shard: int) -> list[int]:
    """The teacher batch sizes ``generate`` uses: per shard, chunks of
    ``max(1, batch_size // views)`` samples times ``views`` views."""
    per_chunk = max(1, batch_size // views)
    sizes = []
    for lo in range(0, num_samples, samples_per_shard):
        hi = min(num_samples, lo + samples_per_shard)
        sizes += [(min(hi, first + per_chunk) - first) * views
                  for first in range(lo, hi, per_chunk)]
    return sizes


def training_inputs(dataset: Any, n: int) -> tuple[Tensor, Tensor]:
    """``n`` training inputs and labels (the data set cycled when it is smaller)."""
    batch = first_batch(dataset, n)
    idx = torch.arange(n) % batch.inputs.shape[0]
    assert batch.targets is not None
    return batch.inputs[idx], batch.targets[idx]


def bare_teacher_rate(model: nn.Module, inputs: Tensor, sizes: list[int], repeats: int,
                      device: torch.device) -> float:
    """Views/s of ``model`` alone (eval, inference_mode) over batches of ``sizes``, on the
    pre-made ``inputs`` (no augmentation, no top-k, no encoding, no writing)."""
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            for b in sizes:
                model(inputs[:b])

    def warmup() -> None:
        with torch.inference_mode():
            model(inputs[:sizes[0]])

    return median_rate(run, sum(sizes), repeats, device, warmup)


def teacher_forward_rate(model: nn.Module, x: Tensor, steps: int, repeats: int,
                         device: torch.device) -> float:
    """Samples/s of ``steps`` teacher forwards (eval, no_grad) on the batch ``x``."""
    model.eval()

    def run(n: int = steps) -> None:
        with torch.no_grad():
            for _ in range(n):
                model(x)

    return median_rate(run, steps * x.shape[0], repeats, device, lambda: run(3))


def student_step_rate(student: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
                      y: Tensor, steps: int, repeats: int, device: torch.device) -> float:
    """Samples/s of ``steps`` training steps (forward, CE, backward, optimizer step)."""
    student.train()

    def run(n: int = steps) -> None:
        for _ in range(n):
            loss = F.cross_entropy(to_outputs(student(x)).logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return median_rate(run, steps * x.shape[0], repeats, device, lambda: run(3))


def epoch_rates(run_dir: Path) -> list[float]:
    """``samples_per_s`` of every epoch record of a run's ``metrics.jsonl``, in epoch order."""
    records = [json.loads(line) for line in (Path(run_dir) / METRICS).read_text().splitlines()
               if line.strip()]
    records = sorted((r for r in records if "samples_per_s" in r), key=lambda r: r["epoch"])
    return [float(r["samples_per_s"]) for r in records]


def steady_rate(run_dir: Path) -> float:
    """Mean samples/s over the epochs after the first (warm-up); the only epoch if just one."""
    rates = epoch_rates(run_dir)
    if not rates:
        raise ConfigError(f"{run_dir}/{METRICS} holds no epoch records")
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` runs in which every run directly follows every other run equally
    often, and each run comes first equally often: a Williams design (Williams, "Experimental
    designs balanced for the estimation of residual effects of treatments", 1949). ``n``
    orders for even ``n``; for odd ``n`` those and their reverses (``2n``).
    """
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        if len(first) % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % n for i in first] for shift in range(n)]
    return orders + [order[::-1] for order in orders] if n % 2 else orders


__all__ = ["balanced_orders", "bare_teacher_rate", "epoch_rates", "generation_batches",
           "median_rate", "steady_rate", "student_step_rate", "teacher_forward_rate",
           "training_inputs"]
