"""CPU latency of several models, timed interleaved in one process.

Each round times every model once, in a seeded shuffled order, as the median of
``repeats`` forward passes after ``warmup``; the figure reported per model and batch size is
the median of its rounds (``reduce="median"``) or the fastest round (``reduce="min"``: the
best estimate of the model's own cost on a machine that another process shares, since
contention only ever adds time). Interleaving makes a drift of the machine's speed (10-20%
on shared VMs) hit every model alike instead of whichever ran last.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _median_ms(run: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@torch.inference_mode()
def time_interleaved(models: dict[str, Callable[[Tensor], object]], example: Tensor, *,
                     batches: list[int], n_threads: int = 1, warmup: int = 10,
                     repeats: int = 50, rounds: int = 5, seed: int = 0,
                     reduce: Literal["median", "min"] = "median"
                     ) -> dict[str, dict[int, float]]:
    """Milliseconds per forward pass of each model at each batch size, ``{label: {batch:
    ms}}`` (``example``: one sample with its batch dimension, repeated to each batch size)."""
    inputs = {b: example[:1].expand(b, *example.shape[1:]).contiguous() for b in batches}
    samples: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in models}
    order = list(models)
    rng = random.Random(seed)
    pick = statistics.median if reduce == "median" else min
    was = {k: getattr(m, "training", None) for k, m in models.items()}
    for m in models.values():
        if hasattr(m, "eval"):
            m.eval()
    try:
        with threads(n_threads):
            for _ in range(rounds):
                rng.shuffle(order)
                for label in order:
                    for b in batches:
                        samples[label][b].append(_median_ms(
                            lambda m=models[label], x=inputs[b]: m(x), warmup, repeats))
    finally:
        for k, m in models.items():
            if was[k] is not None:
                m.train(was[k])
    return {k: {b: pick(v) for b, v in per.items()} for k, per in samples.items()}


__all__ = ["threads", "time_interleaved"]
