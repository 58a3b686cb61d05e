"""``kdforge bench grid``: every distillation method on every teacher/student pair, several seeds.

The grid is ``benchmarks/grid.yaml`` (see its comments): pairs (a data set, a teacher, a
student, their epochs and the layers each method reads, by role) and methods (loss-term
templates naming layer roles as ``$role.student``). It writes ``grid.json`` and ``grid.md``:
mean and spread of test accuracy, gain over the student trained alone, agreement, KL, time
per epoch. Results are written to files, never asserted by tests; a finished run of exactly
the same config is reused, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError, KDForgeError
from kdforge.jobs.results import GRID_METRICS, finished_run, pm, select, stat, write_results
from kdforge.jobs.specs import Section, read_spec

# -- the spec ------------------------------------------------------------------------------------


class LayerRole(Section):
    """One layer role of a pair: the student's and the teacher's layer (or list of layers)."""

    student: str | list[str]
    teacher: str | list[str]


class PairSpec(Section):
    """``pairs.NAME``: a data set, a teacher and a student, trained for ``epochs``."""

    data: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    epochs: int = Field(gt=0)
    layers: dict[str, LayerRole] = Field(default_factory=dict)

    @field_validator("teacher", "student")
    @classmethod
    def _named(cls, model: dict[str, Any]) -> dict[str, Any]:
        if "name" not in model:
            raise ValueError("must name a model, e.g. {name: resnet20}")
        return model

    def layer_names(self) -> dict[str, dict[str, Any]]:
        """The layer roles as plain dicts, as :func:`resolve_layers` reads them."""
        return {role: names.model_dump() for role, names in self.layers.items()}


class GridSpec(Section):
    """The whole of ``benchmarks/grid.yaml``."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    output_dir: str = "runs/grid"
    device: str = "auto"
    optim: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    pairs: dict[str, PairSpec] = Field(min_length=1)
    methods: dict[str, list[dict[str, Any]]] = Field(min_length=1)

    @field_validator("optim", "schedule")
    @classmethod
    def _given_mapping(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        if value is None:  # an absent key stays None (it is not validated)
            raise ValueError("must be a mapping of options, e.g. {name: adamw, lr: 0.01}")
        return value


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file (``ConfigError`` naming each bad key)."""
    return read_spec(path, GridSpec, "grid file", "benchmarks/grid.yaml")


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


# -- running the grid ----------------------------------------------------------------------------


def _run_config(grid: GridSpec, pair: PairSpec, name: str, seed: int, output: Path,
                student: dict, losses: list, teacher_run: Path | None, epochs: int) -> Any:
    cfg = {
        "name": name, "seed": seed, "output_dir": str(output),
        "data": pair.data, "student": student, "losses": losses,
        "optim": {} if grid.optim is None else grid.optim,
        "schedule": {} if grid.schedule is None else grid.schedule,
        "train": {"epochs": epochs, "device": grid.device,
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
    output = Path(grid.output_dir)
    seed_list = list(grid.seeds)[: seeds or None]
    chosen_pairs = select("pair", grid.pairs, pairs)
    chosen_methods = select("method", grid.methods, methods)
    out: dict[str, Any] = {"grid": str(path), "seeds": seed_list, "pairs": {}}
    start = time.perf_counter()
    teachers: dict[str, Any] = {}  # pairs that share data, teacher and epochs share the run
    for pair_name in chosen_pairs:
        pair = grid.pairs[pair_name]
        n_epochs = epochs or pair.epochs
        t0 = time.perf_counter()
        teacher = _teacher_run(grid, pair, n_epochs, output, teachers)
        record: dict[str, Any] = {
            "teacher": {"model": pair.teacher["name"], "params": teacher.summary["student_params"],
                        "accuracy": teacher.summary["test"]["accuracy"],
                        "time_s": time.perf_counter() - t0},
            "student": {"model": pair.student["name"]}, "epochs": n_epochs, "methods": {}}
        if verbose:
            print(f"[{pair_name}] teacher {pair.teacher['name']}: test accuracy "
                  f"{100 * teacher.summary['test']['accuracy']:.1f}%", flush=True)
        for method in chosen_methods:
            record["methods"][method] = _run_method(
                grid, pair, pair_name, method, seed_list, output / pair_name, teacher.run_dir,
                n_epochs, verbose)
        out["pairs"][pair_name] = record
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        write_results(results, "grid", out, grid_markdown(out))
    return out


def _teacher_run(grid: GridSpec, pair: PairSpec, epochs: int, output: Path,
                 teachers: dict[str, Any]) -> api.RunResult:
    """The pair's teacher: trained once per (data, teacher, epochs, optim, schedule)."""
    key = json.dumps([pair.data, pair.teacher, epochs, grid.optim, grid.schedule],
                     sort_keys=True)
    if key not in teachers:
        # Named by what it is, so grids run in parallel (or over subsets of the pairs)
        # share identical teachers and never overwrite each other's.
        name = f"teacher-{pair.teacher['name']}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        cfg = _run_config(grid, pair, name, 0, output / "teachers", pair.teacher,
                          [{"name": "ce"}], None, epochs)
        teachers[key] = finished_run(cfg) or api.train(cfg, overwrite=True, verbose=False)
    return teachers[key]


def _run_method(grid: GridSpec, pair: PairSpec, pair_name: str, method: str, seeds: list[int],
                output: Path, teacher_run: Path, epochs: int, verbose: bool) -> dict[str, Any]:
    try:
        losses = resolve_layers(grid.methods[method], pair.layer_names())
    except NotApplicable as exc:
        return {"status": "n/a", "reason": str(exc)}
    needs_teacher = method != "baseline"
    runs = []
    for seed in seeds:
        try:
            cfg = _run_config(grid, pair, f"{method}-seed{seed}", seed, output, pair.student,
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
    stats = {key: stat([r.get(key) for r in runs]) for key in (*GRID_METRICS, "epoch_time_s")}
    return {"status": "ok", "runs": runs, **stats}


# -- the tables ----------------------------------------------------------------------------------


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
                f"| {method} | {pm(acc, 100, 1)} | {gain} | {pm(m['agreement'], 100, 1)} | "
                f"{pm(m['kl'], 1, 3)} | {m['epoch_time_s']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def _training_minutes(out: dict[str, Any]) -> float:
    total = 0.0
    for record in out["pairs"].values():
        total += record["teacher"].get("time_s", 0.0)
        for m in record["methods"].values():
            total += sum(r["epoch_time_s"] * record["epochs"] for r in m.get("runs", []))
    return total / 60


__all__ = ["GridSpec", "NotApplicable", "grid_markdown", "load_grid", "resolve_layers",
           "run_grid"]
