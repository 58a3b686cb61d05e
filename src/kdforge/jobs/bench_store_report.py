"""The store benchmark's report: its six targets, PASS or MISS, and ``results/store.md``.

Every target is "value >= threshold" on a figure of ``results/store.json`` (see
:mod:`kdforge.jobs.bench_store` for how each is measured).
"""

from __future__ import annotations

import math
from typing import Any

#: figure -> (threshold, meaning of the target); every target is "value >= threshold".
TARGETS: dict[str, tuple[float, str]] = {
    "generation_vs_bare": (0.9, "store generation runs at >= 90% of the bare teacher forward"),
    "store_vs_supervised": (0.95, "training from the store costs <= 5% over training alone"),
    "store_vs_online": (3.0, "the store trains >= 3x faster than online KD (when the "
                             "teacher costs >= 5x a student step)"),
    "online_vs_ideal": (0.95, "online KD reaches >= 95% of the ideal rate (< 5% framework "
                              "overhead)"),
    "teacher_cost_ratio": (5.0, "premise of store_vs_online: a teacher forward costs >= 5x "
                                "a student step"),
    "store_vs_online_accuracy": (-0.5, "store KD's test accuracy is at most 0.5 points below "
                                       "online KD's (points, mean over seeds)"),
}
#: FKD's own figure (Shen & Xing 2022): k = 5 fp16 soft labels and crop parameters.
FKD_BYTES_PER_VIEW = 39
FKD_VIEWS_PER_IMAGE = 500
RUNS = ("supervised", "online_kd", "store_kd")


def verdict(value: float | None, figure: str) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    return "PASS" if value >= TARGETS[figure][0] else "MISS"


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def store_markdown(out: dict[str, Any]) -> str:
    """``results/store.md``: the figures with their targets, PASS or MISS."""
    lines = (_intro(out) + _targets_table(out) + _runs_table(out) + _rates_table(out)
             + _size_and_formats(out))
    return "\n".join(lines) + "\n"


def _intro(out: dict[str, Any]) -> list[str]:
    lines = [
        "# Soft-label store (FKD) vs online distillation\n",
        f"{out['data']}: {out['teacher']} teacher (test {100 * out['teacher_accuracy']:.1f}%, "
        f"{out['teacher_params']:,} params) -> {out['student']} student; {out['epochs']} "
        f"epochs, batch {out['batch_size']}, seeds {out['seeds']}, losses {out['losses']}, "
        f"consistent view; device {out['device']} with {out['torch_threads']} threads. "
        f"Store: {out['views_per_sample']} views per sample, top-{out['top_k']}, "
        f"{out['value_format']} (main format), {out['repeats']} view(s) per loaded sample. "
        f"Total time {out['total_time_s'] / 60:.1f} min.\n",
        "The runs of a seed take turns epoch by epoch, and after each epoch the teacher "
        f"forward and the student step are timed ({out['timing_steps']} steps each), so every "
        "rate of one epoch was measured under the same machine load. Rates are medians over "
        f"the {out['timed_epochs']} epochs after each run's first, over all seeds; ratios "
        "are medians of the per-epoch ratios. Accuracies are means over the seeds.\n",
    ]
    return lines


def _targets_table(out: dict[str, Any]) -> list[str]:
    premise = out["teacher_cost_ratio"] >= TARGETS["teacher_cost_ratio"][0]
    lines = [
        "\n## Targets\n",
        "| figure | value | target | result |",
        "|---|---|---|---|",
    ]
    for figure, (threshold, meaning) in TARGETS.items():
        result = verdict(out.get(figure), figure)
        if figure == "store_vs_online" and not premise:
            result += " (premise not met: see teacher_cost_ratio)"
        lines.append(f"| {figure}: {meaning} | {_num(out.get(figure))} | >= {threshold:g} | "
                     f"{result} |")
    return lines


def _runs_table(out: dict[str, Any]) -> list[str]:
    lines = [
        "\n## Training runs\n",
        "Throughput: samples/s of an epoch (metrics.jsonl: data loading, view, forward, "
        "backward, optimizer step; validation excluded). Agreement and KL(teacher || "
        "student) on the test set, against the real teacher (for the supervised run "
        "measured after training)."
        + (f" store_kd loads each sample once for {out['repeats']} views: its samples are "
           "views." if out["repeats"] > 1 else "") + "\n",
        "| run | samples/s | test acc % | agreement % | KL | train time s |",
        "|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        label = run if run != "store_kd" else f"store_kd ({out['value_format']})"
        lines.append(
            f"| {label} | {_num(out[f'{run}_samples_per_s'], 0)} | "
            f"{_num(100 * out[f'{run}_accuracy'], 1)} ± "
            f"{_num(100 * out[f'{run}_accuracy_std'], 1)} | "
            f"{_num(_pct(out.get(f'{run}_agreement')), 1)} | {_num(out.get(f'{run}_kl'), 3)} | "
            f"{_num(out[f'{run}_train_time_s'], 1)} |")
    return lines


def _rates_table(out: dict[str, Any]) -> list[str]:
    lines = [
        f"\nstore_vs_supervised = {_num(out['store_vs_supervised'], 3)}, store_vs_online = "
        f"{_num(out['store_vs_online'])}, store_vs_online_accuracy = "
        f"{_num(out['store_vs_online_accuracy'])} points.\n",
        "\n## Rates\n",
        "| rate | value | what it measures |",
        "|---|---|---|",
        f"| generation | {_num(out['generation_views_per_s'], 0)} views/s | "
        "`kdforge soft-labels` end to end: data, augmentation, teacher, top-k, encoding, "
        "shard writes |",
        f"| bare teacher | {_num(out['bare_teacher_views_per_s'], 0)} views/s | the teacher "
        f"network alone (eval, inference_mode) over {out['bare_views']:,} views in the "
        f"generation's first batches (up to {out['generation_batch_size']}), pre-made "
        "inputs; mean of "
        f"the medians of {out['timing_repeats']} passes timed right before and right after "
        "the generation |",
        f"| teacher forward | {_num(out['teacher_forward_samples_per_s'], 0)} samples/s | "
        f"eval, no_grad, batch {out['batch_size']} of augmented inputs |",
        f"| student step | {_num(out['student_step_samples_per_s'], 0)} samples/s | forward, "
        f"CE, backward, optimizer step, batch {out['batch_size']} |",
        f"| ideal online | {_num(out['ideal_online_samples_per_s'], 0)} samples/s | "
        "1 / (1 / teacher forward + 1 / student step) |",
        f"\nteacher_cost_ratio = student step rate / teacher forward rate = "
        f"{_num(out['teacher_cost_ratio'])} (a teacher forward costs that many student "
        f"steps); supervised run / student step = {_num(out['supervised_vs_student_step'])} "
        "(the training loop's own overhead without a teacher).\n",
    ]
    return lines


def _size_and_formats(out: dict[str, Any]) -> list[str]:
    fmts = out["value_formats"].split(",")
    lines = [
        "\n## Size\n",
        f"{out['bytes_per_view']} bytes per view ({out['value_format']}, top-{out['top_k']}, "
        f"crop and flip), {out['bytes_per_sample']:,} bytes per sample at "
        f"{out['views_per_sample']} views, {out['store_bytes'] / 1e6:.2f} MB for the whole "
        f"store; at 500 views that is {out['bytes_per_view'] * 500 / 1000:.1f} KB per image. "
        f"FKD (Shen & Xing 2022) reports {FKD_BYTES_PER_VIEW} bytes per crop at k = 5 in "
        f"fp16, {FKD_BYTES_PER_VIEW * FKD_VIEWS_PER_IMAGE / 1000:.1f} KB per image of "
        f"{FKD_VIEWS_PER_IMAGE} crops.\n",
        "\n## Value format (accuracy cost of quantisation)\n",
        "| value format | bytes/view | generation views/s | samples/s | test acc % | "
        "agreement % | KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt in fmts:
        p = f"store_kd_{fmt}_"
        lines.append(
            f"| {fmt} | {out[f'bytes_per_view_{fmt}']} | "
            f"{_num(out.get(f'generation_{fmt}_views_per_s'), 0)} | "
            f"{_num(out[p + 'samples_per_s'], 0)} | {_num(100 * out[p + 'accuracy'], 1)} ± "
            f"{_num(100 * out[p + 'accuracy_std'], 1)} | "
            f"{_num(_pct(out.get(p + 'agreement')), 1)} | {_num(out.get(p + 'kl'), 3)} |")
    return lines


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


__all__ = ["FKD_BYTES_PER_VIEW", "FKD_VIEWS_PER_IMAGE", "RUNS", "TARGETS", "store_markdown",
           "verdict"]
