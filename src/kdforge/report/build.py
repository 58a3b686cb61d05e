"""``kdforge report``: one self-contained HTML page and a Markdown summary of many runs.

:func:`build_report` reads run directories (files only: :mod:`kdforge.report.runs`),
groups them by setting, draws the figures (:mod:`kdforge.report.figures`) and collects the
tables; :func:`write_report` writes ``report.html`` (figures embedded as base64 PNG data
URIs, inline CSS, no script, no external file), ``report.md`` and the figures as
``img/*.png`` (which ``report.md`` shows).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdforge.core.errors import ConfigError
from kdforge.report import figures
from kdforge.report.calibration import disagreement, reliability
from kdforge.report.runs import (
    PREDICTIONS,
    Group,
    RunInfo,
    find_runs,
    group_runs,
    is_run_dir,
    load_run,
    read_predictions,
)
from kdforge.report.tables import Row, table_cells

HTML, MARKDOWN, IMAGES = "report.html", "report.md", "img"
#: at most this many groups get a calibration figure (the page stays a few MB)
MAX_CALIBRATION_GROUPS = 24
#: record keys a scheme / pipeline table never shows (paths, nested options)
HIDDEN_RECORD_KEYS = {"run_dir", "student_options", "config", "path"}
MAX_RECORD_COLUMNS = 12


@dataclass
class Figure:
    name: str  # file stem under img/
    title: str
    png: bytes | None  # None: ``note`` says why there is none
    note: str = ""


@dataclass
class Calibration:
    group: str
    figure: Figure
    facts: list[str] = field(default_factory=list)


@dataclass
class RecordsTable:
    title: str
    path: Path
    header: list[str]
    body: list[list[str]]


@dataclass
class Report:
    title: str
    inputs: list[str]
    runs: list[RunInfo]
    groups: list[Group]
    table: tuple[list[str], list[list[str]]]
    run_rows: list[list[str]]
    curves: Figure
    fidelity: Figure
    calibration: list[Calibration]
    records: list[RecordsTable]
    problems: list[str]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))


def default_output(paths: Sequence[str | os.PathLike]) -> Path:
    """``report/`` in the first path when it is a directory of runs (not a run itself),
    else beside it (``PARENT/report``)."""
    first = Path(paths[0])
    return first / "report" if not is_run_dir(first) else first.parent / "report"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "group"


def group_rows(groups: Sequence[Group]) -> list[Row]:
    """One table row per group: its finished runs' summaries (schemes and pipelines as a
    row with a note; their records are tabled below)."""
    rows = []
    for group in groups:
        if group.kind in ("scheme", "compress"):
            records = sum(len(r.records) for r in group.runs)
            what = "scheme" if group.kind == "scheme" else "compression pipeline"
            rows.append(Row(group.label, [], note=f"{what}, {records} records: see below"))
            continue
        finished = [r.summary for r in group.runs if r.summary is not None]
        unfinished = len(group.runs) - len(finished)
        rows.append(Row(group.label, finished,
                        note=f"{unfinished} unfinished" if unfinished else ""))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return "…"


def run_rows(groups: Sequence[Group]) -> list[list[str]]:
    """Every run: group, name, seed, kind, state, test accuracy / agreement / ECE in %,
    whether it has predictions, and its directory."""
    out = []
    for group in groups:
        for run in group.runs:
            test = run.test
            pct = [f"{100 * test[k]:.2f}" if isinstance(test.get(k), (int, float)) else "-"
                   for k in ("accuracy", "agreement", "ece")]
            state = "finished" if run.finished else "unfinished"
            out.append([group.label, run.name, _fmt(run.seed), run.kind, state, *pct,
                        "yes" if run.has_predictions else "no", str(run.path)])
    return out


def records_table(run: RunInfo) -> RecordsTable:
    """A scheme's or pipeline's records: one row each, their scalar fields as columns."""
    columns: list[str] = []
    for record in run.records:
        columns.extend(k for k, v in record.items() if k not in columns
                       and k not in HIDDEN_RECORD_KEYS and not isinstance(v, (dict, list)))
    columns = columns[:MAX_RECORD_COLUMNS]
    body = [[_fmt(record.get(k)) for k in columns] for record in run.records]
    return RecordsTable(f"{run.kind} {run.name}", run.path, columns, body)


def _pooled(runs: Sequence[RunInfo]) -> tuple[dict[str, np.ndarray], list[str] | None, int]:
    """The group's predictions concatenated over its seeds (same test set, same classes)."""
    parts: dict[str, list[np.ndarray]] = {"student": [], "targets": [], "teacher": [],
                                          "teacher_student": []}
    classes, k, used = None, None, 0
    for run in runs:
        preds = read_predictions(run.path)
        if preds is None or preds["student"].ndim != 2:
            continue
        if k is None:
            k, classes = preds["student"].shape[1], preds.get("classes")
        if preds["student"].shape[1] != k:
            continue
        used += 1
        parts["student"].append(preds["student"])
        parts["targets"].append(preds["targets"])
        if "teacher" in preds and preds["teacher"].shape == preds["student"].shape:
            parts["teacher"].append(preds["teacher"])
            parts["teacher_student"].append(preds["student"])
    return {key: np.concatenate(v) for key, v in parts.items() if v}, classes, used


def calibration_section(group: Group) -> Calibration:
    """The reliability diagrams and disagreement confusion of one group (pooled over its
    seeds), or a figure-less note when no run of it has ``predictions.safetensors``."""
    name = f"calibration-{_slug(group.label)}"
    pooled, classes, used = _pooled(group.runs)
    if "student" not in pooled:
        return Calibration(group.label, Figure(name, group.label, None,
                                               f"no {PREDICTIONS} in its run directories "
                                               "(written by kdforge runs since 0.2)"))
    student = reliability(pooled["student"], pooled["targets"])
    teacher = dis = None
    if "teacher" in pooled:
        teacher = reliability(pooled["teacher"], pooled["targets"])
        dis = disagreement(pooled["teacher"], pooled["teacher_student"])
    title = f"{group.label}: {used} run(s), {student.num_samples} test predictions"
    png = figures.calibration_figure(student, teacher, dis, classes, title)
    facts = [f"student ECE {100 * student.ece:.2f}%"]
    if teacher is not None and dis is not None:
        facts.append(f"teacher ECE {100 * teacher.ece:.2f}%")
        facts.append(f"disagreement {100 * dis.rate:.1f}% ({dis.count} of {dis.num_samples})")
        label = (lambda c: str(classes[c])) if classes else str
        top = ", ".join(f"{label(i)}→{label(j)} ({n})" for i, j, n in dis.top_pairs(3))
        if top:
            facts.append(f"most frequent (teacher→student): {top}")
    else:
        facts.append("no teacher (its teacher's predictions are not in the file)")
    return Calibration(group.label, Figure(name, group.label, png), facts)


def build_report(paths: Sequence[str | os.PathLike], title: str = "kdforge report") -> Report:
    """Read every run given or below ``paths`` and build the report (figures included)."""
    if not paths:
        raise ConfigError("kdforge report needs at least one run directory (or a directory "
                          "that holds runs)")
    dirs = find_runs(paths)
    if not dirs:
        raise ConfigError(f"no run directory in {', '.join(map(str, paths))} (a run holds "
                          "summary.json, metrics.jsonl or config.yaml); give the runs' folder")
    runs = [load_run(d) for d in dirs]
    groups = group_runs(runs)
    colors = figures.group_colors(groups)
    rows = group_rows(groups)
    curves = figures.curves_figure(groups, colors)
    fidelity = figures.fidelity_figure(groups, colors)
    trained = [g for g in groups if g.kind == "run"]
    calibration = [calibration_section(g) for g in trained[:MAX_CALIBRATION_GROUPS]]
    problems = [f"{r.path}: {p}" for r in runs for p in r.problems]
    if len(trained) > MAX_CALIBRATION_GROUPS:
        problems.append(f"calibration shown for the first {MAX_CALIBRATION_GROUPS} of "
                        f"{len(trained)} groups")
    return Report(
        title=title, inputs=[str(p) for p in paths], runs=runs, groups=groups,
        table=table_cells(rows), run_rows=run_rows(groups),
        curves=Figure("curves", "learning curves", curves,
                      "" if curves else "no metrics.jsonl with numeric metrics"),
        fidelity=Figure("fidelity", "fidelity versus accuracy", fidelity,
                        "" if fidelity else "no run measured agreement with a teacher "
                        "(test agreement in summary.json)"),
        calibration=calibration,
        records=[records_table(r) for r in runs if r.records],
        problems=problems,
    )


def write_report(paths: Sequence[str | os.PathLike], output: str | os.PathLike | None = None,
                 title: str = "kdforge report") -> dict[str, Path]:
    """Build the report of ``paths`` and write ``report.html``, ``report.md`` and
    ``img/*.png`` to ``output`` (default: :func:`default_output`)."""
    from kdforge.core.files import atomic_write
    from kdforge.report.html import render_html, render_markdown

    report = build_report(paths, title)
    out = Path(output) if output is not None else default_output(paths)
    images = out / IMAGES
    for figure in [report.curves, report.fidelity, *(c.figure for c in report.calibration)]:
        if figure.png is not None:
            atomic_write(images / f"{figure.name}.png",
                         lambda tmp, data=figure.png: Path(tmp).write_bytes(data))
    html = render_html(report)
    markdown = render_markdown(report, IMAGES)
    atomic_write(out / HTML, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    atomic_write(out / MARKDOWN, lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    for path in [out / HTML, out / MARKDOWN, *images.glob("*.png")]:
        path.chmod(0o644)  # a page to share (the atomic write's temporary file was 0600)
    return {"html": out / HTML, "markdown": out / MARKDOWN, "images": images,
            "runs": len(report.runs), "groups": len(report.groups)}  # type: ignore[dict-item]


__all__ = ["HTML", "MARKDOWN", "Report", "build_report", "default_output", "write_report"]
