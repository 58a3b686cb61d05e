"""Finding runs, grouping seeds and the comparison table, on hand-made run directories."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from kdforge.core.errors import ConfigError
from kdforge.report.build import build_report, default_output, group_rows, write_report
from kdforge.report.runs import find_runs, group_runs, load_run, read_predictions
from kdforge.report.tables import table_cells


def make_run(root: Path, name: str, seed: int, acc: float, agree: float | None = None,
             latency: float | None = 1.0, params: int = 100, **config) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "output_dir": str(root), "student": {"name": "mlp"},
           **config}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    test = {"accuracy": acc, "kl": 0.5 + seed, "ece": 0.1}
    if agree is not None:
        test["agreement"] = agree
    (run / "summary.json").write_text(json.dumps({
        "name": name, "seed": seed, "student_params": params, "latency_ms": latency,
        "latency_batch": 32, "test": test}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train/loss": 2.0 / e, "val/accuracy": acc * e / 3}) + "\n"
        for e in (1, 2, 3)))
    return run


def test_seeds_form_one_group_with_mean_and_std(tmp_path):
    accs = [0.80, 0.84, 0.90]
    for seed, acc in enumerate(accs):  # a teacher per seed: runs/teacher-seed{seed}
        make_run(tmp_path, f"kd-seed{seed}", seed, acc, agree=0.9 - seed / 100,
                 latency=1.0 + seed, teacher={"run": f"runs/teacher-seed{seed}"})
    make_run(tmp_path, "alone-seed0", 0, 0.7, latency=None)
    make_run(tmp_path, "alone-lr-seed0", 0, 0.6, optim={"lr": 0.5})
    groups = group_runs([load_run(p) for p in find_runs([tmp_path])])
    assert [(g.label, len(g.runs)) for g in groups] == [("alone-lr", 1), ("alone", 1), ("kd", 3)]
    header, body = table_cells(group_rows(groups))
    kd = dict(zip(header, body[2], strict=True))
    mean, std = statistics.mean(accs) * 100, statistics.stdev(accs) * 100
    assert kd["test acc %"] == f"{mean:.1f} ± {std:.1f}"
    assert kd["agree %"] == f"{89.0:.1f} ± {100 * statistics.stdev([0.9, 0.89, 0.88]):.1f}"
    assert kd["KL(T||S)"] == f"{1.5:.3f} ± {1.0:.3f}"
    assert kd["ms/batch (32)"] == f"{2.0:.3f} ± {1.0:.3f}"
    assert kd["params"] == "100" and kd["seeds"] == "3"
    alone = dict(zip(header, body[1], strict=True))
    assert alone["agree %"] == "-" and alone["ms/batch (32)"] == "-"  # latency off


def test_different_teachers_are_different_groups(tmp_path):
    make_run(tmp_path, "kd-seed0", 0, 0.8, teacher={"run": "runs/teacher-a"})
    make_run(tmp_path, "kd-seed1", 1, 0.8, teacher={"run": "runs/teacher-b"})
    groups = group_runs([load_run(p) for p in find_runs([tmp_path])])
    assert [g.label for g in groups] == ["kd", "kd (2)"]


def test_schemes_pipelines_and_broken_runs_do_not_stop_the_report(tmp_path):
    make_run(tmp_path, "kd-seed0", 0, 0.8, agree=0.9)
    scheme = tmp_path / "takd"
    scheme.mkdir()
    (scheme / "config.yaml").write_text("name: takd\nscheme: {name: takd}\n")
    (scheme / "scheme.json").write_text(json.dumps({"name": "takd", "scheme": "takd", "records": [
        {"variant": "assistant", "test_accuracy": 81.0, "run_dir": "x",
         "student_options": {"a": 1}}]}))
    make_run(scheme, "assistant", 0, 0.81)
    pipe = tmp_path / "pipe"
    (pipe / "kd" / "prune").mkdir(parents=True)
    (pipe / "config.yaml").write_text("name: pipe\n")
    (pipe / "compress.json").write_text(json.dumps({"runs": [{"stage": "original", "params": 9}]}))
    (pipe / "kd" / "prune" / "stage.json").write_text("{}")
    (pipe / "kd" / "prune" / "metrics.jsonl").write_text('{"epoch": 1, "train/loss": 1}\n')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    (broken / "metrics.jsonl").write_text('{"epoch": 1, "val/accuracy": 0.5}\n{"epo')
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: unfinished\nseed: 0\n")
    report = build_report([tmp_path])
    kinds = sorted((r.name, r.kind) for r in report.runs)
    assert ("takd", "scheme") in kinds and ("pipe", "compress") in kinds
    assert not any(r.path.name == "prune" for r in report.runs)  # a stage of its pipeline
    assert any("summary.json" in p for p in report.problems)
    labels = [cells[0] for cells in report.table[1]]
    assert any(label.startswith("takd (scheme") for label in labels)
    assert any(label.startswith("pipe (compression pipeline") for label in labels)
    assert "unfinished (1 unfinished)" in labels
    assert sorted(t.header for t in report.records) == [["stage", "params"],
                                                        ["variant", "test_accuracy"]]
    out = write_report([tmp_path], tmp_path / "out")
    html = out["html"].read_text()
    assert "Schemes and pipelines" in html and "no predictions.safetensors" in html


def test_missing_predictions_are_said_and_bad_ones_ignored(tmp_path):
    run = make_run(tmp_path, "kd-seed0", 0, 0.8, agree=0.9)
    assert read_predictions(run) is None
    (run / "predictions.safetensors").write_bytes(b"garbage")
    assert read_predictions(run) is None
    report = build_report([tmp_path])
    assert report.calibration[0].figure.png is None
    assert "no predictions.safetensors" in report.calibration[0].figure.note


def test_predictions_pooled_over_seeds(tmp_path):
    for seed in (0, 1):
        run = make_run(tmp_path, f"kd-seed{seed}", seed, 0.5, agree=0.5)
        teacher = torch.eye(3)[[0, 1, 2, 0]] * 5
        student = torch.eye(3)[[0, 1, 1, 1]] * 5
        save_file({"student": student.half(), "teacher": teacher.half(),
                   "targets": torch.tensor([0, 1, 2, 2])}, str(run / "predictions.safetensors"),
                  metadata={"classes": json.dumps(["a", "b", "c"])})
    preds = read_predictions(tmp_path / "kd-seed0")
    assert preds["classes"] == ["a", "b", "c"] and preds["targets"].dtype == np.int64
    (section,) = build_report([tmp_path]).calibration
    assert section.figure.png.startswith(b"\x89PNG")
    assert "disagreement 50.0% (4 of 8)" in " ".join(section.facts)
    assert "c→b (2)" in " ".join(section.facts)


def test_no_runs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no run directory"):
        build_report([tmp_path])
    with pytest.raises(ConfigError, match="not a directory"):
        build_report([tmp_path / "missing"])


def test_default_output(tmp_path):
    run = make_run(tmp_path, "a", 0, 0.5)
    assert default_output([tmp_path]) == tmp_path / "report"
    assert default_output([run]) == tmp_path / "report"
