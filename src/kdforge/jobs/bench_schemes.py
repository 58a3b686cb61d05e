"""``kdforge bench schemes``: every scheme against the student alone and plain KD.

For each scheme of the spec (``benchmarks/schemes.yaml``) and each seed, the scheme's
config runs through :func:`kdforge.stages.scheme_records` (sequences stage by stage), and
so do, at the same budget (the scheme's epochs, optimizer and schedule for each network),
the baselines of every student it reports: the student trained alone on the labels, and
plain KD from the scheme's (first) teacher. Teachers are trained once per spec entry with
seed 0 and shared by every seed. Every run is resumable and a finished one is read back,
so an interrupted benchmark continues where it stopped.

Results: ``schemes.json`` (``{"runs": [...]}``, one flat record per scheme and variant:
mean and spread over seeds) and ``schemes.md``. A run of some entries (``--schemes``)
replaces their rows and keeps the others'.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from kdforge.config import LossConfig, RunConfig, load_config, parse_config
from kdforge.config_yaml import apply_override
from kdforge.jobs.results import stat, write_results
from kdforge.jobs.specs import Section, read_spec
from kdforge.schemes import derive
from kdforge.stages import scheme_records

#: Record fields that are averaged over seeds besides the accuracy (when numbers).
SKIPPED = {"variant", "student", "student_options", "run_dir", "test_accuracy", "compare"}


class TeacherSpec(Section):
    config: str = Field(description="the teacher's run config")
    set: list[str] = Field(default_factory=list, description="overrides (key=value)")


class SchemeSpec(Section):
    config: str = Field(description="the scheme's run config")
    teachers: list[str] = Field(default_factory=list, description="keys of 'teachers'")
    set: list[str] = Field(default_factory=list, description="overrides (key=value)")
    baseline: bool = Field(True, description="train each reported student alone")
    kd: bool = Field(True, description="plain KD from the first teacher (if any)")
    keep_scheme: bool = Field(False, description="baselines keep the scheme section "
                              "(its data adaptation: cross-modal inputs)")
    baseline_set: list[str] = Field(default_factory=list, description="overrides of the "
                                    "baselines' configs (key=value)")


class SchemesBench(Section):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    work: str = Field("runs/bench-schemes", description="where every run is kept")
    kd_losses: list[LossConfig] = Field(default_factory=lambda: [
        LossConfig(name="ce", weight=0.1), LossConfig.model_validate(
            {"name": "kd", "weight": 0.9, "T": 4})])
    teachers: dict[str, TeacherSpec] = Field(default_factory=dict)
    schemes: dict[str, SchemeSpec]


def run_schemes_bench(spec_path: str | Path = "benchmarks/schemes.yaml", *,
                      results: str | Path = "benchmarks/results", schemes: list[str] | None = None,
                      seeds: int | None = None, epochs: int | None = None,
                      verbose: bool = False) -> dict[str, Any]:
    """Run the benchmark; write ``schemes.json`` and ``schemes.md``; return the JSON."""
    spec = read_spec(spec_path, SchemesBench, "schemes benchmark", "benchmarks/schemes.yaml")
    chosen = schemes or list(spec.schemes)
    unknown = [s for s in chosen if s not in spec.schemes]
    if unknown:
        from kdforge.core.errors import ConfigError

        raise ConfigError(f"unknown scheme entries {unknown}; the spec has {list(spec.schemes)}")
    work = Path(spec.work)
    extra = [f"train.epochs={epochs}"] if epochs else []
    teacher_dirs = {key: _teacher(spec, key, work, extra, verbose)
                    for key in {t for name in chosen for t in spec.schemes[name].teachers}}
    rows = []
    for name in chosen:
        rows += _entry(spec, name, teacher_dirs, work,
                       spec.seeds[:seeds] if seeds else spec.seeds, extra, verbose)
    if schemes:
        rows = _merged(Path(results) / "schemes.json", rows, list(spec.schemes))
    out = {"spec": str(spec_path), "seeds": len(spec.seeds[:seeds] if seeds else spec.seeds),
           "runs": rows}
    write_results(results, "schemes", out, schemes_markdown(out))
    return out


def _merged(path: Path, rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """A run of some entries (``--schemes``) replaces their rows in the existing results
    and keeps every other entry's, in the spec's order."""
    fresh = {r["entry"] for r in rows}
    kept = []
    if path.is_file():
        kept = [r for r in json.loads(path.read_text()).get("runs", [])
                if r.get("entry") not in fresh and r.get("entry") in order]
    rank = {name: i for i, name in enumerate(order)}
    return sorted(kept + rows, key=lambda r: rank[r["entry"]])  # stable: variants keep order


def _teacher(spec: SchemesBench, key: str, work: Path, extra: list[str], verbose: bool) -> str:
    if key not in spec.teachers:
        from kdforge.core.errors import ConfigError

        raise ConfigError(f"teacher {key!r} is not defined under 'teachers' in the spec")
    t = spec.teachers[key]
    cfg = load_config(t.config, [*t.set, *extra, f"name={key}",
                                 f"output_dir={work / 'teachers'}"])
    return str(scheme_records(cfg, verbose=verbose)[0]["run_dir"])


def _entry(spec: SchemesBench, name: str, teachers: dict[str, str], work: Path,
           seeds: list[int], extra: list[str], verbose: bool) -> list[dict[str, Any]]:
    entry = spec.schemes[name]
    runs: dict[Any, list[dict[str, Any]]] = {}
    baselines: dict[Any, list[float | None]] = {}
    kds: dict[Any, list[float | None]] = {}
    cfg = None
    for seed in seeds:
        cfg = _scheme_config(entry, name, seed, teachers, work, extra)
        for record in scheme_records(cfg, verbose=verbose):
            key = record.get("variant")
            runs.setdefault(key, []).append(record)
            baselines.setdefault(key, []).append(
                _accuracy(_baseline(cfg, record, None, spec, entry), verbose)
                if entry.baseline else None)
            kds.setdefault(key, []).append(
                _accuracy(_baseline(cfg, record, teachers[entry.teachers[0]], spec, entry),
                          verbose) if entry.kd and entry.teachers else None)
    assert cfg is not None
    return [_row(name, cfg, variant, records, baselines[variant], kds[variant])
            for variant, records in runs.items()]


def _scheme_config(entry: SchemeSpec, name: str, seed: int, teachers: dict[str, str],
                   work: Path, extra: list[str]) -> RunConfig:
    cfg = load_config(entry.config, [*entry.set, *extra, f"seed={seed}", f"name={name}-s{seed}"])
    changes: dict[str, Any] = {"output_dir": str(work / cfg.data.name)}
    if entry.teachers:
        runs = [{"run": teachers[t]} for t in entry.teachers]
        changes["teacher"] = runs[0] if len(runs) == 1 else runs
    data = cfg.to_dict()
    data.update(changes)
    return parse_config(data)


def _baseline(cfg: RunConfig, record: dict[str, Any], teacher: str | None,
              spec: SchemesBench, entry: SchemeSpec) -> RunConfig | None:
    """The student of ``record`` trained alone (``teacher`` None) or by plain KD, at the
    scheme's budget; ``None`` where the record's student is not one registered model, or
    the record says ``compare: False`` (a part that is not trained at that budget: the
    specialists' generalist, a specialist on its subset)."""
    student = record.get("student")
    if not student or "+" in str(student) or record.get("compare") is False:
        return None
    section = {"name": student, **(record.get("student_options") or {})}
    losses = [loss.model_dump(mode="json", exclude_none=True)
              for loss in (spec.kd_losses if teacher else [LossConfig(name="ce")])]
    changes: dict[str, Any] = {"student": section, "losses": losses,
                               "teacher": {"run": teacher} if teacher else None}
    if entry.keep_scheme and cfg.scheme is not None:
        changes["scheme"] = cfg.scheme
    probe = derive(cfg, "probe", **changes).to_dict()
    for item in entry.baseline_set:
        apply_override(probe, item)
    probe.pop("name")
    digest = hashlib.sha1(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:8]
    kind = "kd" if teacher else "alone"
    probe.update(name=f"{kind}-{student}-{digest}",
                 output_dir=str(Path(cfg.output_dir) / "baselines"))
    return parse_config(probe)


def _accuracy(cfg: RunConfig | None, verbose: bool) -> float | None:
    if cfg is None:
        return None
    return scheme_records(cfg, verbose=verbose)[0]["test_accuracy"]


def _row(name: str, cfg: RunConfig, variant: Any, records: list[dict[str, Any]],
         baseline: list[float | None], kd: list[float | None]) -> dict[str, Any]:
    accuracy = stat([r["test_accuracy"] for r in records])
    row: dict[str, Any] = {
        "scheme": cfg.scheme.name if cfg.scheme is not None else name, "entry": name,
        "variant": variant, "dataset": cfg.data.name, "student": records[0].get("student"),
        "seeds": len(records), "test_accuracy": accuracy["mean"],
        "test_accuracy_std": accuracy["std"], "baseline_accuracy": stat(baseline)["mean"],
        "kd_accuracy": stat(kd)["mean"], "agreement": stat([r.get("agreement")
                                                             for r in records])["mean"],
        "train_seconds": stat([r.get("train_seconds") for r in records])["mean"],
    }
    for key, value in records[0].items():
        if key in SKIPPED or key in row:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = stat([r.get(key) for r in records])["mean"]
        else:
            row[key] = value
    return row


#: The columns of the main table (every row has them).
STANDARD = {"scheme", "entry", "variant", "dataset", "student", "seeds", "test_accuracy",
            "test_accuracy_std", "baseline_accuracy", "kd_accuracy", "agreement",
            "train_seconds"}


def _fmt(value: Any, decimals: int = 1) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def schemes_markdown(out: dict[str, Any]) -> str:
    lines = ["# Schemes benchmark", "",
             f"`kdforge bench schemes` ({out['spec']}): test accuracy in percent, mean ± std "
             f"over {out['seeds']} seeds; the baseline is the same student trained alone, KD "
             "is plain KD from the scheme's first teacher, both at the scheme's budget per "
             "network. Agreement: with the scheme's teacher (top-1, test set).", "",
             "| scheme | variant | data | student | accuracy | alone | KD | agreement | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        acc = f"{_fmt(r['test_accuracy'])} ± {_fmt(r['test_accuracy_std'])}"
        lines.append(f"| {r['scheme']} | {r['variant'] or ''} | {r['dataset']} | "
                     f"{r['student']} | {acc} | {_fmt(r['baseline_accuracy'])} | "
                     f"{_fmt(r['kd_accuracy'])} | {_fmt(r['agreement'])} | "
                     f"{_fmt(r['train_seconds'], 0)} |")
    details = [_details(r) for r in out["runs"]]
    if any(details):
        lines += ["", "Scheme-specific fields (means over seeds):", ""]
        lines += [d for d in details if d]
    return "\n".join(lines) + "\n"


def _details(row: dict[str, Any]) -> str:
    """``- scheme variant: key value, ...`` for a row's own fields (old-task accuracy,
    parameters and latency of an exit, teacher weights), or ``""``."""
    own = {k: v for k, v in row.items() if k not in STANDARD and v is not None}
    if not own:
        return ""
    shown = ", ".join(f"{k} {_fmt(v, 3 if abs(v) < 1 else 1)}" if isinstance(v, float)
                      else f"{k} ({len(v)} in schemes.json)" if isinstance(v, list)
                      and v and isinstance(v[0], dict) else f"{k} {v}"
                      for k, v in own.items())
    return f"- {row['scheme']} {row['variant'] or ''}: {shown}"


__all__ = ["SchemesBench", "run_schemes_bench", "schemes_markdown"]
