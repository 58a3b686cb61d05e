"""``kdforge bench recipes``: the teaching settings of Beyer et al. 2022 at several lengths.

"Knowledge distillation: A good teacher is patient and consistent" (CVPR 2022) at small
scale: one teacher (trained once, seed 0), then every teaching setting of
``benchmarks/recipes.yaml`` (a run config each) trained for every schedule length. Writes
``recipes.json``, ``recipes.md`` (final test accuracy and agreement with the teacher) and
``recipes.png``. A finished run of exactly the same config is reused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt

from kdforge import api
from kdforge.config import load_config
from kdforge.jobs.results import GRID_METRICS, finished_run, pm, select, stat, write_results
from kdforge.jobs.specs import Section, read_spec


class RecipesSpec(Section):
    """The whole of ``benchmarks/recipes.yaml``: run configs by path, schedule lengths, seeds."""

    teacher: str = Field(description="the teacher's run config (trained once, seed 0)")
    settings: dict[str, str] = Field(min_length=1, description="label -> student run config")
    epochs: list[PositiveInt] = Field(min_length=1, description="the schedule lengths")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    output_dir: str = "runs/recipes"
    overrides: list[str] = Field(default_factory=list, description="key=value overrides "
                                 "applied to the teacher's and every setting's config (e.g. "
                                 "data.num_samples=8000: another data size)")
    results_name: str = Field("recipes", description="the results files' stem: "
                              "RESULTS/NAME.{json,md,png}")
    description: str = Field("mnist1d, MLP student (2 x 100) distilled from a cnn1d teacher",
                             description="what the study trains, for the results page")


def load_recipes(path: str | Path) -> RecipesSpec:
    """Read and validate a recipes spec (``ConfigError`` naming each bad key)."""
    return read_spec(path, RecipesSpec, "recipes file", "benchmarks/recipes.yaml")


def run_recipes(path: str | Path = "benchmarks/recipes.yaml", *,
                results: str | Path | None = None, epochs: Sequence[int] | None = None,
                seeds: int | None = None, settings: Sequence[str] | None = None,
                verbose: bool = True) -> dict[str, Any]:
    """Every teaching setting at every schedule length; writes recipes.{json,md,png}."""
    spec = load_recipes(path)
    output = Path(spec.output_dir)
    epoch_list = list(epochs or spec.epochs)
    seed_list = list(spec.seeds)[: seeds or None]
    chosen = select("setting", spec.settings, settings)
    start = time.perf_counter()
    teacher_cfg = load_config(spec.teacher,
                              [*spec.overrides, f"output_dir={output}", "name=teacher"])
    teacher = api.train(teacher_cfg, overwrite=True, verbose=False)
    if verbose:
        print(f"teacher: test accuracy {100 * teacher.summary['test']['accuracy']:.1f}%",
              flush=True)
    out: dict[str, Any] = {"epochs": epoch_list, "seeds": seed_list,
                           "description": spec.description, "overrides": spec.overrides,
                           "teacher_accuracy": teacher.summary["test"]["accuracy"], "settings": {}}
    for label in chosen:
        out["settings"][label] = {
            str(n_epochs): _run_setting(spec.settings[label], label, n_epochs, seed_list, output,
                                        teacher.run_dir, verbose, spec.overrides)
            for n_epochs in epoch_list
        }
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        plot = plot_recipes(out, Path(results) / f"{spec.results_name}.png")
        write_results(results, spec.results_name, out, recipes_markdown(out, plot.name))
    return out


def _run_setting(config: str, label: str, n_epochs: int, seeds: list[int], output: Path,
                 teacher_run: Path, verbose: bool, overrides: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """One teaching setting at one schedule length, for every seed: its runs and statistics."""
    runs = []
    for seed in seeds:
        name = f"{label.replace(' ', '_')}-e{n_epochs}-seed{seed}"
        cfg = load_config(config, [
            *overrides, f"output_dir={output}", f"name={name}", f"seed={seed}",
            f"train.epochs={n_epochs}", f"teacher.run={teacher_run}",
            f"train.eval_every={max(1, n_epochs // 30)}"])
        result = finished_run(cfg) or api.train(cfg, overwrite=True, verbose=False)
        runs.append({"seed": seed, "run_dir": str(result.run_dir),
                     "train_time_s": result.summary["train_time_s"],
                     **{k: result.summary["test"].get(k) for k in GRID_METRICS}})
        if verbose:
            print(f"{label:18s} {n_epochs:5d} epochs seed {seed}: test accuracy "
                  f"{100 * result.summary['test']['accuracy']:.1f}%, agreement "
                  f"{100 * result.summary['test']['agreement']:.1f}%", flush=True)
    return {"runs": runs,
            **{k: stat([r[k] for r in runs]) for k in (*GRID_METRICS, "train_time_s")}}


def recipes_markdown(out: dict[str, Any], plot_name: str) -> str:
    epochs = out["epochs"]
    lines = ["# Patient and consistent: teaching settings x schedule length\n",
             f"{out.get('description', 'mnist1d')} (test "
             f"{100 * out['teacher_accuracy']:.1f}%) with KL at T = 1 only; seeds "
             f"{out['seeds']}"
             + (f"; overrides {', '.join(out['overrides'])}" if out.get("overrides") else "")
             + f". Total time {out['total_time_s'] / 60:.1f} min.\n",
             "\nTest accuracy % (agreement with the teacher %):\n",
             "| setting | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for label, rows in out["settings"].items():
        cells = []
        for e in epochs:
            r = rows[str(e)]
            cells.append(f"{pm(r['accuracy'], 100, 1)} ({pm(r['agreement'], 100, 1)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\n![teaching settings]({plot_name})\n")
    return "\n".join(lines) + "\n"


def plot_recipes(out: dict[str, Any], path: Path) -> Path:
    """Left: final test accuracy vs schedule length. Right: validation agreement with the
    teacher along the longest schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdforge.report.plots import read_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    longest = str(max(out["epochs"]))
    for label, rows in out["settings"].items():
        xs = [int(e) for e in rows]
        ys = [100 * rows[e]["accuracy"]["mean"] for e in rows]
        (line,) = left.plot(xs, ys, marker="o", label=label)
        run_dir = rows[longest]["runs"][0]["run_dir"]
        epochs, agree = read_curve(run_dir, "val/agreement")
        right.plot(epochs, 100 * agree, color=line.get_color(), label=label)
    left.axhline(100 * out["teacher_accuracy"], color="gray", ls="--", label="teacher")
    left.set_xscale("log")
    left.set_xlabel("schedule length (epochs)")
    left.set_ylabel("test accuracy %")
    left.set_title("final student accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("validation agreement with teacher %")
    right.set_title(f"agreement along the {longest}-epoch schedule")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["RecipesSpec", "load_recipes", "plot_recipes", "recipes_markdown", "run_recipes"]
