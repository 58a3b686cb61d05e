"""The search space of ``nas``: candidate students from a zoo model's depth and width
options, and what each one costs (parameters, measured CPU latency).

A candidate is the zoo model's options with one list-valued option (``key``: ``channels``
of ``cnn1d`` / ``cnn2d``, ``hidden`` of ``mlp``) set to ``depth`` entries of ``width``
each, or, with ``grow``, doubling per block (``[w, 2w, 4w, ...]``, capped at the largest
width of the grid). The grid is every ``depth x width`` pair in that order (depths outer);
a seeded sample of it keeps the grid's order, so candidate ``i`` is the same network in
every run of the same config.

Costs are what a deployment pays: the scalar parameters of the whole network, and the
milliseconds of a forward pass on CPU with a fixed number of intra-op threads (the
candidates timed interleaved, the fastest round kept: :func:`latencies`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.engine.latency import time_interleaved
from kdforge.models import count_parameters, create_model

#: The depth/width option searched by default, by zoo model (``scheme.key`` sets another).
DEFAULT_KEYS: dict[str, str] = {"mlp": "hidden", "cnn1d": "channels", "cnn2d": "channels"}

#: Reference zoo students by the rank of one input sample (no batch dimension): the plain-KD
#: baselines the chosen architecture is compared with (the one nearest in parameters).
DEFAULT_REFERENCES: dict[int, list[dict[str, Any]]] = {
    1: [{"name": "mlp", "hidden": [100, 100]}, {"name": "mlp", "hidden": [32]}],
    2: [{"name": "mlp", "hidden": [100, 100]}, {"name": "mlp", "hidden": [32]},
        {"name": "cnn1d"}],
    3: [{"name": "mlp", "hidden": [100, 100]}, {"name": "mlp", "hidden": [32]},
        {"name": "cnn2d"}],
}


def search_key(model: str, key: str | None) -> str:
    """The option searched for ``model``: ``key`` if given, else its default."""
    if key is not None:
        return key
    if model not in DEFAULT_KEYS:
        raise ConfigError(
            f"nas has no default depth/width option for model {model!r} (it knows "
            f"{', '.join(f'{m}: {k}' for m, k in DEFAULT_KEYS.items())}); set scheme.key to "
            "the model's list-valued option, e.g. key: channels")
    return DEFAULT_KEYS[model]


def block_widths(depth: int, width: int, *, grow: bool, cap: int) -> list[int]:
    """``depth`` widths: ``[width] * depth``, or with ``grow`` ``[w, 2w, 4w, ...]`` with
    every entry at most ``cap``."""
    if not grow:
        return [width] * depth
    return [min(width * 2 ** i, max(cap, width)) for i in range(depth)]


def candidate_grid(base: dict[str, Any], key: str, depths: list[int], widths: list[int], *,
                   grow: bool = False) -> list[dict[str, Any]]:
    """The options of every candidate: ``base`` with ``key`` set, depths outer, widths inner."""
    cap = max(widths)
    return [{**base, key: block_widths(d, w, grow=grow, cap=cap)}
            for d in depths for w in widths]


def sample_indices(n: int, k: int | None, seed: int) -> list[int]:
    """``k`` of the indices ``0..n-1`` drawn with ``seed`` (all if ``k`` is ``None`` or
    ``>= n``), in increasing order."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def latencies(models: list[nn.Module], input_shape: tuple[int, ...], *, batch: int,
              threads: int, repeats: int, rounds: int = 5, seed: int = 0) -> list[float]:
    """CPU milliseconds of one inference forward pass of each model on a batch of ``batch``
    zero inputs of ``input_shape``, with ``threads`` intra-op threads: the models timed
    interleaved in ``rounds`` rounds, each the median of ``repeats`` passes, and the fastest
    round kept, so another process on the machine does not push a candidate over budget
    (:func:`kdforge.engine.latency.time_interleaved`)."""
    example = torch.zeros(1, *input_shape)
    labelled = {str(i): m for i, m in enumerate(models)}
    times = time_interleaved(labelled, example, batches=[batch], n_threads=threads,
                             warmup=5, repeats=repeats, rounds=rounds, seed=seed,
                             reduce="min")
    return [times[str(i)][batch] for i in range(len(models))]


@dataclass(frozen=True)
class Cost:
    """What one candidate costs: scalar parameters and CPU latency (ms, :func:`latencies`)."""

    params: int
    latency_ms: float


def build(model: str, options: dict[str, Any], num_classes: int,
          input_shape: tuple[int, ...]) -> nn.Module:
    """The zoo model ``model`` with ``options`` for the run's classes and input shape (on CPU)."""
    return create_model(model, num_classes, input_shape, **options)


def measure_costs(model: str, options: list[dict[str, Any]], num_classes: int,
                  input_shape: tuple[int, ...], *, batch: int = 1, threads: int = 1,
                  repeats: int = 30, rounds: int = 5, seed: int = 0) -> list[Cost]:
    """The parameters and CPU latency of the zoo model ``model`` with each of ``options``
    (built on CPU, timed interleaved: :func:`latencies`)."""
    nets = [build(model, opts, num_classes, input_shape) for opts in options]
    times = latencies(nets, input_shape, batch=batch, threads=threads, repeats=repeats,
                      rounds=rounds, seed=seed)
    return [Cost(count_parameters(n), t) for n, t in zip(nets, times, strict=True)]


def measure_cost(model: str, options: dict[str, Any], num_classes: int,
                 input_shape: tuple[int, ...], **timing: Any) -> Cost:
    """:func:`measure_costs` of one candidate."""
    return measure_costs(model, [options], num_classes, input_shape, **timing)[0]


__all__ = ["DEFAULT_KEYS", "DEFAULT_REFERENCES", "Cost", "block_widths", "build",
           "candidate_grid", "latencies", "measure_cost", "measure_costs", "sample_indices",
           "search_key"]
