"""``kdforge bench``: benchmarks whose results are written to files, never asserted by tests.

A run whose directory already holds a finished run of exactly the same config is reused, so
an interrupted benchmark resumes where it stopped.

``grid`` runs every distillation method of ``benchmarks/grid.yaml`` on every teacher/student
pair for several seeds and writes ``grid.json`` and ``grid.md`` (mean and spread of test
accuracy, gain over the student trained alone, agreement, KL, time per epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError, KDForgeError
from kdforge.report.tables import mean_std

GRID_METRICS = ("accuracy", "agreement", "kl")


def load_grid(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {str(path)!r} does not exist (see benchmarks/grid.yaml)")
    grid = yaml.safe_load(path.read_text())
    for key in ("pairs", "methods"):
        if not isinstance(grid.get(key), dict) or not grid[key]:
            raise ConfigError(f"{path}: needs a non-empty '{key}' mapping")
    return grid


class NotApplicable(Exception):
    """A method template names a layer role the pair does not define."""


def resolve_layers(template: Any, layers: dict[str, dict[str, Any]]) -> Any:
    """Replace ``$role.side`` strings (``side`` in student/teacher/students/teachers)."""
    if isinstance(template, dict):
        return {k: resolve_layers(v, layers) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve_layers(v, layers) for v in template]
    if isinstance(template, str) and template.startswith("$"):
        role, _, side = template[1:].partition(".")
        if role not in layers:
            raise NotApplicable(f"the pair defines no '{role}' layers")
        value = layers[role][side.rstrip("s")]
        want_list = side.endswith("s")
        if want_list and not isinstance(value, list):
            value = [value]
        if not want_list and isinstance(value, list):
            raise ConfigError(f"${role}.{side} is a list; use ${role}.{side}s")
        return value
    return template


def _run_config(grid: dict, pair: dict, name: str, seed: int, output: Path,
                student: dict, losses: list, teacher_run: Path | None, epochs: int) -> Any:
    cfg = {
        "name": name, "seed": seed, "output_dir": str(output),
        "data": pair["data"], "student": student, "losses": losses,
        "optim": grid.get("optim", {}), "schedule": grid.get("schedule", {}),
        "train": {"epochs": epochs, "device": grid.get("device", "auto"),
                  "eval_every": max(1, epochs // 4)},
    }
    if teacher_run is not None:
        cfg["teacher"] = {"run": str(teacher_run)}
    return parse_config(cfg)


def run_grid(path: str | Path = "benchmarks/grid.yaml", *, results: str | Path | None = None,
             methods: Sequence[str] | None = None, pairs: Sequence[str] | None = None,
             seeds: int | None = None, epochs: int | None = None, verbose: bool = True
             ) -> dict[str, Any]:
    """Run the grid; return and write (``results``/grid.json, grid.md) its results."""
    grid = load_grid(path)
    output = Path(grid.get("output_dir", "runs/grid"))
    seed_list = list(grid.get("seeds", [0]))[: seeds or None]
    chosen_pairs = _select("pair", grid["pairs"], pairs)
    chosen_methods = _select("method", grid["methods"], methods)
    out: dict[str, Any] = {"grid": str(path), "seeds": seed_list, "pairs": {}}
    start = time.perf_counter()
    teachers: dict[str, Any] = {}  # pairs that share data, teacher and epochs share the run
    for pair_name in chosen_pairs:
        pair = grid["pairs"][pair_name]
        n_epochs = epochs or pair["epochs"]
        pair_out = output / pair_name
        t0 = time.perf_counter()
        key = json.dumps([pair["data"], pair["teacher"], n_epochs, grid.get("optim"),
                          grid.get("schedule")], sort_keys=True)
        if key not in teachers:
            # Named by what it is, so grids run in parallel (or over subsets of the pairs)
            # share identical teachers and never overwrite each other's.
            name = f"teacher-{pair['teacher']['name']}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
            teacher_cfg = _run_config(grid, pair, name, 0, output / "teachers",
                                      pair["teacher"], [{"name": "ce"}], None, n_epochs)
            teachers[key] = (finished_run(teacher_cfg)
                             or api.train(teacher_cfg, overwrite=True, verbose=False))
        teacher = teachers[key]
        record: dict[str, Any] = {
            "teacher": {"model": pair["teacher"]["name"], "params": teacher.summary["student_params"],
                        "accuracy": teacher.summary["test"]["accuracy"],
                        "time_s": time.perf_counter() - t0},
            "student": {"model": pair["student"]["name"]}, "epochs": n_epochs, "methods": {}}
        if verbose:
            print(f"[{pair_name}] teacher {pair['teacher']['name']}: test accuracy "
                  f"{100 * teacher.summary['test']['accuracy']:.1f}%", flush=True)
        for method in chosen_methods:
            record["methods"][method] = _run_method(
                grid, pair, pair_name, method, seed_list, pair_out, teacher.run_dir, n_epochs,
                verbose)
        out["pairs"][pair_name] = record
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        write_results(results, "grid", out, grid_markdown(out))
    return out


def write_results(results: str | Path, stem: str, out: dict[str, Any], markdown: str) -> Path:
    """Write a benchmark's ``STEM.json`` and ``STEM.md`` into ``results``; returns the folder."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown)
    return results


def _select(kind: str, available: dict, chosen: Sequence[str] | None) -> list[str]:
    if not chosen:
        return list(available)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ConfigError(f"unknown {kind}(s) {unknown}; the grid has {list(available)}")
    return list(chosen)


def _run_method(grid: dict, pair: dict, pair_name: str, method: str, seeds: list[int],
                output: Path, teacher_run: Path, epochs: int, verbose: bool) -> dict[str, Any]:
    try:
        losses = resolve_layers(grid["methods"][method], pair.get("layers", {}))
    except NotApplicable as exc:
        return {"status": "n/a", "reason": str(exc)}
    needs_teacher = method != "baseline"
    runs = []
    for seed in seeds:
        try:
            cfg = _run_config(grid, pair, f"{method}-seed{seed}", seed, output, pair["student"],
                              losses, teacher_run if needs_teacher else None, epochs)
            result = finished_run(cfg) or api.train(cfg, overwrite=True, verbose=False)
        except KDForgeError as exc:
            return {"status": "error", "reason": str(exc)}
        except Exception as exc:  # a bug: record it with its traceback, keep the grid going
            return {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()}
        summary = result.summary
        runs.append({"seed": seed, **{k: summary["test"].get(k) for k in GRID_METRICS},
                     "epoch_time_s": summary["train_time_s"] / max(1, summary["epochs"])})
        if verbose:
            print(f"[{pair_name}] {method:10s} seed {seed}: test accuracy "
                  f"{100 * summary['test']['accuracy']:.1f}%", flush=True)
    stats = {}
    for key in (*GRID_METRICS, "epoch_time_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        mean, std, n = mean_std(values)
        stats[key] = {"mean": mean if n else None, "std": std if n else None, "n": n}
    return {"status": "ok", "runs": runs, **stats}


def grid_markdown(out: dict[str, Any]) -> str:
    lines = ["# Method grid\n",
             f"Test metrics of the final epoch, mean ± std over seeds {out['seeds']}; gain is "
             "the difference of mean test accuracy to the student trained alone (baseline). "
             f"Training time of all runs: {_training_minutes(out):.1f} min (s/epoch per method "
             "in the tables; runs reused from an earlier invocation count with their own "
             "time).\n"]
    for pair_name, record in out["pairs"].items():
        t = record["teacher"]
        lines.append(f"\n## {pair_name}: {t['model']} ({t['params']:,} params, test "
                     f"{100 * t['accuracy']:.1f}%) -> {record['student']['model']}, "
                     f"{record['epochs']} epochs\n")
        lines.append("| method | test acc % | gain | agree % | KL(T‖S) | s/epoch |")
        lines.append("|---|---|---|---|---|---|")
        base = record["methods"].get("baseline", {})
        base_acc = base.get("accuracy", {}).get("mean") if base.get("status") == "ok" else None
        for method, m in record["methods"].items():
            if m["status"] != "ok":
                reason = m["reason"].splitlines()[0][:90]
                lines.append(f"| {method} | {m['status']}: {reason} | | | | |")
                continue
            acc = m["accuracy"]
            gain = ("" if base_acc is None or method == "baseline"
                    else f"{100 * (acc['mean'] - base_acc):+.1f}")
            lines.append(
                f"| {method} | {_pm(acc, 100, 1)} | {gain} | {_pm(m['agreement'], 100, 1)} | "
                f"{_pm(m['kl'], 1, 3)} | {m['epoch_time_s']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def _training_minutes(out: dict[str, Any]) -> float:
    total = 0.0
    for record in out["pairs"].values():
        total += record["teacher"].get("time_s", 0.0)
        for m in record["methods"].values():
            total += sum(r["epoch_time_s"] * record["epochs"] for r in m.get("runs", []))
    return total / 60


def _pm(stat: dict[str, Any], scale: float, decimals: int) -> str:
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float)
                                                and math.isnan(stat["mean"])):
        return "-"
    if stat["n"] == 1:
        return f"{stat['mean'] * scale:.{decimals}f}"
    return f"{stat['mean'] * scale:.{decimals}f} ± {stat['std'] * scale:.{decimals}f}"


# -- the patient-and-consistent experiment -----------------------------------------------------

def run_recipes(path: str | Path = "benchmarks/recipes.yaml", *,
                results: str | Path | None = None, epochs: Sequence[int] | None = None,
                seeds: int | None = None, settings: Sequence[str] | None = None,
                verbose: bool = True) -> dict[str, Any]:
    """Every teaching setting at every schedule length; writes recipes.{json,md,png}."""
    from kdforge.config import load_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipes file {str(path)!r} does not exist (see benchmarks/recipes.yaml)")
    spec = yaml.safe_load(path.read_text())
    output = Path(spec.get("output_dir", "runs/recipes"))
    epoch_list = list(epochs or spec["epochs"])
    seed_list = list(spec.get("seeds", [0]))[: seeds or None]
    chosen = _select("setting", spec["settings"], settings)
    start = time.perf_counter()
    teacher_cfg = load_config(spec["teacher"], [f"output_dir={output}", "name=teacher"])
    teacher = api.train(teacher_cfg, overwrite=True, verbose=False)
    if verbose:
        print(f"teacher: test accuracy {100 * teacher.summary['test']['accuracy']:.1f}%", flush=True)
    out: dict[str, Any] = {"epochs": epoch_list, "seeds": seed_list,
                           "teacher_accuracy": teacher.summary["test"]["accuracy"], "settings": {}}
    for label in chosen:
        rows: dict[str, Any] = {}
        for n_epochs in epoch_list:
            runs = []
            for seed in seed_list:
                name = f"{label.replace(' ', '_')}-e{n_epochs}-seed{seed}"
                cfg = load_config(spec["settings"][label], [
                    f"output_dir={output}", f"name={name}", f"seed={seed}",
                    f"train.epochs={n_epochs}", f"teacher.run={teacher.run_dir}",
                    f"train.eval_every={max(1, n_epochs // 30)}"])
                result = finished_run(cfg) or api.train(cfg, overwrite=True, verbose=False)
                runs.append({"seed": seed, "run_dir": str(result.run_dir),
                             "train_time_s": result.summary["train_time_s"],
                             **{k: result.summary["test"].get(k) for k in GRID_METRICS}})
                if verbose:
                    print(f"{label:18s} {n_epochs:5d} epochs seed {seed}: test accuracy "
                          f"{100 * result.summary['test']['accuracy']:.1f}%, agreement "
                          f"{100 * result.summary['test']['agreement']:.1f}%", flush=True)
            rows[str(n_epochs)] = {
                "runs": runs,
                **{k: _stat([r[k] for r in runs]) for k in (*GRID_METRICS, "train_time_s")},
            }
        out["settings"][label] = rows
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        plot = plot_recipes(out, Path(results) / "recipes.png")
        write_results(results, "recipes", out, recipes_markdown(out, plot.name))
    return out


def finished_run(cfg: Any) -> api.RunResult | None:
    """A run of exactly this config that already finished (benchmarks resume for free)."""
    run_dir = api.run_dir_of(cfg)
    summary, config = run_dir / api.SUMMARY_FILE, run_dir / api.CONFIG_FILE
    if summary.is_file() and config.is_file() and config.read_text() == cfg.to_yaml():
        return api.RunResult(run_dir, json.loads(summary.read_text()))
    return None


def _stat(values: list[float]) -> dict[str, Any]:
    mean, std, n = mean_std([v for v in values if v is not None])
    return {"mean": mean if n else None, "std": std if n else None, "n": n}


def recipes_markdown(out: dict[str, Any], plot_name: str) -> str:
    epochs = out["epochs"]
    lines = ["# Patient and consistent: teaching settings x schedule length\n",
             f"mnist1d, MLP student (2 x 100) distilled from a cnn1d teacher (test "
             f"{100 * out['teacher_accuracy']:.1f}%) with KL at T = 1 only; seeds "
             f"{out['seeds']}. Total time {out['total_time_s'] / 60:.1f} min.\n",
             "\nTest accuracy % (agreement with the teacher %):\n",
             "| setting | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for label, rows in out["settings"].items():
        cells = []
        for e in epochs:
            r = rows[str(e)]
            cells.append(f"{_pm(r['accuracy'], 100, 1)} ({_pm(r['agreement'], 100, 1)})")
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
