"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

- learning curves: one panel per metric of ``metrics.jsonl`` (validation accuracy and
  agreement, then every training loss part), one line per group: the mean over its seeds,
  shaded by +- one standard deviation;
- fidelity versus accuracy: test agreement with the teacher against test accuracy, one
  point per run, each group's mean with +- one std error bars;
- calibration of one group: reliability diagrams of the student and the teacher (Guo et al.
  2017) and the confusion of their disagreements (see :mod:`kdforge.report.calibration`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdforge.report.calibration import Disagreement, Reliability
from kdforge.report.plots import curve_of, draw_mean_curve
from kdforge.report.runs import Group

#: validation metrics plotted first, in this order, then the training loss parts
VAL_METRICS = ("val/accuracy", "val/agreement")
MAX_PANELS = 12
#: a confusion matrix with at most this many classes prints its counts in the cells
ANNOTATE_CLASSES = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buffer.getvalue()


def group_colors(groups: Sequence[Group]) -> dict[str, Any]:
    """A fixed colour per group label (the same in every figure)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}


def curve_metrics(groups: Sequence[Group]) -> list[str]:
    """The metrics to plot: validation accuracy and agreement, then ``train/*`` parts
    (``train/loss`` first), at most :data:`MAX_PANELS`."""
    keys: list[str] = []
    for group in groups:
        for run in group.runs:
            for record in run.metrics:
                keys.extend(k for k in record if k not in keys
                            and isinstance(record[k], (int, float)))
    val = [k for k in VAL_METRICS if k in keys]
    train = sorted((k for k in keys if k.startswith("train/")),
                   key=lambda k: (not k.endswith("/loss"), k))
    return (val + train)[:MAX_PANELS]


def curves_figure(groups: Sequence[Group], colors: dict[str, Any]) -> bytes | None:
    """Learning curves of every group with metrics; ``None`` when no run has any."""
    groups = [g for g in groups if any(r.metrics for r in g.runs)]
    metrics = curve_metrics(groups)
    if not metrics:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows + 0.6), dpi=100,
                             squeeze=False)
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for group in groups:
            curves = [curve_of(r.metrics, metric) for r in group.runs]
            if draw_mean_curve(ax, group.label, curves, colors[group.label]):
                handles.setdefault(group.label, ax.lines[-1])
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric in VAL_METRICS:
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    labels = list(handles)
    ncol = min(4, max(1, len(labels)))
    legend_rows = -(-len(labels) // ncol)
    bottom = min(0.4, (0.1 + 0.22 * legend_rows) / fig.get_figheight())
    fig.legend([handles[k] for k in labels], [handles[k].get_label() for k in labels],
               loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return png(fig)


def fidelity_figure(groups: Sequence[Group], colors: dict[str, Any]) -> bytes | None:
    """Test agreement (x) against test accuracy (y), in %; ``None`` when no run measured
    agreement (no run has a teacher)."""
    points = {g.label: [(r.test["agreement"], r.test["accuracy"]) for r in g.runs
                        if r.test.get("agreement") is not None
                        and r.test.get("accuracy") is not None] for g in groups}
    points = {k: np.asarray(v, dtype=float) * 100 for k, v in points.items() if v}
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.0), dpi=100)
    for label, xy in points.items():
        color = colors[label]
        ax.scatter(xy[:, 0], xy[:, 1], color=color, alpha=0.45, s=22, edgecolors="none")
        mean = xy.mean(0)
        std = xy.std(0, ddof=1) if len(xy) > 1 else np.zeros(2)
        ax.errorbar(mean[0], mean[1], xerr=std[0], yerr=std[1], fmt="D", color=color,
                    markersize=7, capsize=3, markeredgecolor="black", markeredgewidth=0.6,
                    label=f"{label} (n={len(xy)})")
    ax.set_xlabel("test agreement with the teacher (top-1, %)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("fidelity versus accuracy (points: runs; diamonds: mean ± std over seeds)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return png(fig)


def _reliability_panel(ax, rel: Reliability, title: str) -> None:
    width = rel.edges[1] - rel.edges[0]
    centers = rel.edges[:-1] + width / 2
    filled = rel.count > 0
    ax.bar(centers[filled], rel.accuracy[filled], width=width, color="#4878cf",
           edgecolor="#1f3d7a", linewidth=0.6, label="accuracy")
    acc, conf = rel.accuracy[filled], rel.confidence[filled]
    over = conf > acc  # over-confident bins: the gap is above the bar, filled
    ax.bar(centers[filled][over], (conf - acc)[over], bottom=acc[over], width=width,
           color="#e24a33", alpha=0.3, edgecolor="#e24a33", hatch="//", linewidth=0.4,
           label="gap to confidence")
    ax.bar(centers[filled][~over], (acc - conf)[~over], bottom=conf[~over], width=width,
           facecolor="none", edgecolor="#e24a33", hatch="//", linewidth=0.4)
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    share = rel.count / max(1, rel.num_samples)
    ax.plot(centers, share, color="black", marker=".", linewidth=0.8, markersize=4,
            label="share of samples in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top softmax probability)", fontsize=8)
    ax.set_ylabel("accuracy in the bin", fontsize=8)
    ax.set_title(f"{title}\nECE {100 * rel.ece:.2f}%  acc {100 * rel.accuracy_total:.1f}%  "
                 f"n={rel.num_samples}", fontsize=9)
    ax.tick_params(labelsize=8)


def _confusion_panel(ax, dis: Disagreement, classes: Sequence[str] | None) -> None:
    plt = _pyplot()
    k = dis.matrix.shape[0]
    image = ax.imshow(dis.matrix, cmap="Blues", interpolation="nearest")
    cbar = plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=7)
    if k <= ANNOTATE_CLASSES:
        top = max(1, dis.matrix.max())
        for i in range(k):
            for j in range(k):
                if dis.matrix[i, j]:
                    ax.text(j, i, str(dis.matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if dis.matrix[i, j] > top / 2 else "black")
    step = max(1, -(-k // 20))
    ticks = list(range(0, k, step))
    names = [str(classes[t])[:10] if classes else str(t) for t in ticks]
    ax.set_xticks(ticks, names, fontsize=7, rotation=90 if classes else 0)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("student's class", fontsize=8)
    ax.set_ylabel("teacher's class", fontsize=8)
    ax.set_title(f"disagreements: {dis.count} of {dis.num_samples} "
                 f"({100 * dis.rate:.1f}%)", fontsize=9)


def calibration_figure(student: Reliability, teacher: Reliability | None,
                       dis: Disagreement | None, classes: Sequence[str] | None = None,
                       title: str = "") -> bytes:
    """Reliability of the student and of the teacher, and the disagreement confusion (the
    teacher's panels are left out when the run has no teacher)."""
    plt = _pyplot()
    panels = 1 + (teacher is not None) + (dis is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.3 * panels, 4.3), dpi=100, squeeze=False)
    axes = list(axes.flat)
    _reliability_panel(axes[0], student, "student" if teacher is not None
                       else "the run's model (no teacher)")
    if teacher is not None:
        _reliability_panel(axes[1], teacher, "teacher")
    if dis is not None:
        _confusion_panel(axes[-1], dis, classes)
    if title:
        fig.suptitle(title, fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = len(labels) if panels > 1 else 2  # one panel: the legend in two rows
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if panels > 1 else 0.11, 1, 1))
    return png(fig)


__all__ = ["calibration_figure", "curve_metrics", "curves_figure", "fidelity_figure",
           "group_colors", "png"]
