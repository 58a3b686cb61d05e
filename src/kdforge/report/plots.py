"""Plots from run directories (reads ``metrics.jsonl`` files only)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def read_curve(run_dir: str | os.PathLike, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``metric`` from a run's ``metrics.jsonl``."""
    epochs, values = [], []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if metric in record:
            epochs.append(record["epoch"])
            values.append(record[metric])
    return np.asarray(epochs), np.asarray(values, dtype=float)


def plot_curves(groups: Mapping[str, Sequence[str | os.PathLike]], path: str | os.PathLike,
                metric: str = "val/accuracy", title: str = "", ylabel: str | None = None) -> Path:
    """One line per group: the mean over its runs (seeds), shaded by +- one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, run_dirs in groups.items():
        curves = [read_curve(d, metric) for d in run_dirs]
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        length = min(len(c[0]) for c in curves)
        epochs = curves[0][0][:length]
        values = np.stack([c[1][:length] for c in curves])
        mean, std = values.mean(0), values.std(0)
        (line,) = ax.plot(epochs, mean, label=f"{label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
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
