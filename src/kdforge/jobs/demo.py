"""``kdforge demo``: teachers, students alone and KD students on bundled data, 3 seeds each.

The recipes are the YAML files in the repository's ``configs/<dataset>/`` (teacher,
student, kd), so what the demo measures is what a user gets from those files. Results:
``OUTPUT/results.md`` (tables), ``OUTPUT/results.json`` and one accuracy plot per data set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdforge import api
from kdforge.config import RunConfig, load_config
from kdforge.core.errors import ConfigError
from kdforge.engine.logging import interactive
from kdforge.report.plots import plot_curves
from kdforge.report.tables import TEST_COLUMNS, build_rows, markdown_table, rich_table

DATASETS = ("mnist1d", "digits")
_BASIC = (("teacher", "{dataset}/teacher.yaml", False),
          ("student alone", "{dataset}/student.yaml", False),
          ("KD student", "{dataset}/kd.yaml", True))
#: Per data set: (label, recipe under configs/, whether it learns from the seed-0 teacher).
#: On mnist1d the student also learns with consistent views and with function matching
#: (Beyer et al. 2022); digits is saturated, so it shows fidelity and speed only.
SETTINGS = {
    "mnist1d": (*_BASIC,
                ("consistent KD", "recipes/consistent.yaml", True),
                ("function matching", "recipes/function_matching.yaml", True)),
    "digits": _BASIC,
}


def configs_dir() -> Path:
    """The repository's ``configs/`` (next to ``src/``), or ``./configs``."""
    repository = Path(__file__).resolve().parents[3]  # src/kdforge/jobs/demo.py
    for candidate in (repository / "configs", Path.cwd() / "configs"):
        if (candidate / "mnist1d" / "teacher.yaml").is_file():
            return candidate
    raise ConfigError("the demo reads its recipes from the repository's configs/ folder; run it "
                      "from a kdforge checkout (make demo)")


def demo_config(dataset: str, recipe: str, output: Path, seed: int, quick: bool,
                teacher_run: Path | None) -> RunConfig:
    overrides = [f"seed={seed}", f"output_dir={output / dataset}"]
    if quick:
        overrides.append("train.epochs=2")
    base = load_config(configs_dir() / recipe.format(dataset=dataset), overrides)
    updates: dict[str, Any] = {"name": f"{base.name}-seed{seed}"}
    if teacher_run is not None:
        updates["teacher"] = base.teachers[0].model_copy(update={"run": str(teacher_run)})
    return base.model_copy(update=updates)


def run_demo(output: str | Path = "runs/demo", *, quick: bool = False, seeds: int = 3,
             datasets: tuple[str, ...] = DATASETS, verbose: bool = True) -> dict[str, Any]:
    """Train every setting of every data set for ``seeds`` seeds; print and write results."""
    from rich.console import Console

    console = Console(width=None if interactive() else 110)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    markdown = ["# kdforge demo results\n",
                f"Test-set metrics of the final epoch, mean ± std over {seeds} seed(s); "
                "KD students learn from the teacher of seed 0.\n"]
    start = time.perf_counter()
    for dataset in datasets:
        groups: dict[str, list[Path]] = {}
        teacher_run: Path | None = None
        for label, recipe, distilled in SETTINGS[dataset]:
            groups[label] = []
            for seed in range(seeds):
                cfg = demo_config(dataset, recipe, output, seed, quick,
                                  teacher_run if distilled else None)
                t0 = time.perf_counter()
                result = api.train(cfg, overwrite=True, verbose=False)
                groups[label].append(result.run_dir)
                if verbose:
                    acc = 100 * result.summary["test"]["accuracy"]
                    console.print(f"[{dataset}] {label:14s} seed {seed}: test accuracy "
                                  f"{acc:5.1f}%  ({time.perf_counter() - t0:.1f} s)")
            if label == "teacher":
                teacher_run = groups[label][0]
        rows = build_rows(groups)
        title = f"{dataset}: teacher -> student ({seeds} seed(s))"
        console.print(rich_table(rows, title=title))
        plot = plot_curves(groups, output / f"{dataset}_val_accuracy.png",
                           title=f"{dataset}: validation accuracy", ylabel="validation accuracy")
        markdown += [f"\n## {dataset}\n", markdown_table(rows), f"\n![{dataset}]({plot.name})\n"]
        results[dataset] = {
            row.label: {key: _stat(row.stat(key)) for key, *_ in TEST_COLUMNS}
            | {"params": row.first("student_params"),
               "latency_ms": row.runs[0]["latency_ms"] if row.runs else None}
            for row in rows
        }
    elapsed = time.perf_counter() - start
    markdown.append(f"\nTotal time: {elapsed:.0f} s.\n")
    (output / "results.md").write_text("".join(markdown))
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if verbose:
        console.print(f"results: {output / 'results.md'}, plots: {output}/*.png "
                      f"({elapsed:.0f} s)")
    return results


def _stat(stat: tuple[float, float, int]) -> dict[str, Any]:
    """JSON-safe mean/std/n (None where no run measured the metric)."""
    mean, std, n = stat
    return {"mean": mean if n else None, "std": std if n else None, "n": n}
