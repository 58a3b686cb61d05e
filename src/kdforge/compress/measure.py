"""What ``kdforge compress`` measures: size, CPU latency, accuracy and agreement.

Latency is the median wall time of one forward pass after warm-up, on CPU with the stated
number of threads. Variants are timed in the same process and *interleaved*: each round
times every variant once, in a seeded shuffled order, and the reported figure is the
median over rounds, so a drift of the machine's speed (10-20% on shared VMs) hits every
variant alike instead of whichever ran last.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdforge.data.loaders import eval_loader, to_batch


def count_parameters(model: nn.Module) -> int:
    """Parameters of a float module (a pruned one counts its remaining channels; masks
    count as the dense tensors they are)."""
    return sum(p.numel() for p in model.parameters())  # shared ones once


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _median_ms(run: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def time_interleaved(models: dict[str, Callable[[Tensor], object]], example: Tensor, *,
                     batches: list[int], n_threads: int = 1, warmup: int = 10,
                     repeats: int = 50, rounds: int = 5, seed: int = 0
                     ) -> dict[str, dict[int, float]]:
    """Median milliseconds per forward pass of each model at each batch size,
    ``{label: {batch: ms}}``, timed in interleaved rounds (see the module docstring)."""
    inputs = {b: example[:1].expand(b, *example.shape[1:]).contiguous() for b in batches}
    samples: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in models}
    order = list(models)
    rng = random.Random(seed)
    with threads(n_threads):
        for _ in range(rounds):
            rng.shuffle(order)
            for label in order:
                for b in batches:
                    x = inputs[b]
                    samples[label][b].append(
                        _median_ms(lambda m=models[label], x=x: m(x), warmup, repeats))
    return {k: {b: statistics.median(v) for b, v in per.items()} for k, per in samples.items()}


@torch.no_grad()
def predictions(model: Callable[[Tensor], Tensor], dataset: Dataset, batch_size: int = 64
                ) -> tuple[Tensor, Tensor]:
    """Top-1 predictions of ``model`` on every sample of ``dataset`` (CPU), and targets."""
    preds, targets = [], []
    for raw in eval_loader(dataset, batch_size):
        batch = to_batch(raw)
        logits = model(batch.inputs)
        logits = logits.logits if hasattr(logits, "logits") else logits
        preds.append(torch.as_tensor(logits).argmax(-1))
        targets.append(batch.targets)
    return torch.cat(preds), torch.cat(targets)


def accuracy_and_agreement(preds: Tensor, targets: Tensor, reference: Tensor
                           ) -> dict[str, float]:
    """Test accuracy and top-1 agreement with ``reference`` predictions, in percent."""
    return {"accuracy": 100.0 * float((preds == targets).float().mean()),
            "agreement": 100.0 * float((preds == reference).float().mean())}


__all__ = ["accuracy_and_agreement", "count_parameters", "predictions", "threads",
           "time_interleaved"]
