"""Plots from run directories (reads ``metrics.jsonl`` files only)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def curve_of(records: Iterable[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``metric`` in a run's metric records (those that hold it)."""
    epochs, values = [], []
    for record in records:
        value = record.get(metric)
        if isinstance(value, (int, float)) and "epoch" in record:
            epochs.append(record["epoch"])
            values.append(value)
    return np.asarray(epochs), np.asarray(values, dtype=float)


def read_curve(run_dir: str | os.PathLike, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``metric`` from a run's ``metrics.jsonl``."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return curve_of((json.loads(line) for line in lines if line.strip()), metric)


def draw_mean_curve(ax, label: str, curves: Sequence[tuple[np.ndarray, np.ndarray]],
                    color: Any = None) -> bool:
    """One line on ``ax``: the mean of ``curves`` (seeds) over their common epochs, shaded
    by +- one std when there are several. False when no curve has a point."""
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return False
    length = min(len(c[0]) for c in curves)
    epochs = curves[0][0][:length]
    values = np.stack([c[1][:length] for c in curves])
    mean, std = values.mean(0), values.std(0)
    (line,) = ax.plot(epochs, mean, label=f"{label} (n={len(curves)})", color=color,
                      marker="o" if length == 1 else None, markersize=3)
    if len(curves) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    return True


def plot_curves(groups: Mapping[str, Sequence[str | os.PathLike]], path: str | os.PathLike,
                metric: str = "val/accuracy", title: str = "", ylabel: str | None = None) -> Path:
    """One line per group: the mean over its runs (seeds), shaded by +- one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, run_dirs in groups.items():
        draw_mean_curve(ax, label, [read_curve(d, metric) for d in run_dirs])
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
