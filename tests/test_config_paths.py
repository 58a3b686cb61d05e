"""Relative paths in a config file are relative to the file; --set values to the cwd."""

from __future__ import annotations

import os

import yaml

from kdforge import api
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.config_paths import resolve_paths
from tests.conftest import synthetic_config


def test_every_declared_path_resolves_against_the_file(tmp_path):
    base = tmp_path / "project" / "configs"
    data = {"output_dir": "../runs", "student": {"name": "mlp", "weights": "w.safetensors"},
            "teacher": [{"run": "../runs/t"}, {"name": "mlp", "weights": "/abs/w.pt"}],
            "data": {"name": "arrays", "train": "d/train.npz", "test": "~/test.npz"},
            "eval_teacher": {"run": "t2"}, "scheme": {"name": "lwf", "old_run": "old"},
            "losses": [{"name": "kd", "T": 4}], "name": "not/a/path"}
    out = resolve_paths(data, "RunConfig", base)
    assert out["output_dir"] == str(tmp_path / "project" / "runs")
    assert out["student"]["weights"] == str(base / "w.safetensors")
    assert out["teacher"][0]["run"] == str(tmp_path / "project" / "runs" / "t")
    assert out["teacher"][1]["weights"] == "/abs/w.pt"
    assert out["data"]["train"] == str(base / "d" / "train.npz")
    assert out["data"]["test"] == os.path.expanduser("~/test.npz")
    assert out["eval_teacher"]["run"] == str(base / "t2")
    assert out["scheme"]["old_run"] == str(base / "old")
    assert out["name"] == "not/a/path" and out["losses"] == [{"name": "kd", "T": 4}]
    store = resolve_paths({"teacher": {"store": "s"}, "store": {"views_from": "v"}},
                          "SoftLabelConfig", base)
    assert store == {"teacher": {"store": str(base / "s")}, "store": {"views_from": str(base / "v")}}
    assert resolve_paths({"run": "r", "output_dir": 3}, "CompressConfig", base) == {
        "run": str(base / "r"), "output_dir": 3}  # a wrong type is left to validation


def test_shipped_configs_work_from_any_directory(tmp_path, monkeypatch):
    root = os.getcwd()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.join(root, "configs", "recipes", "consistent.yaml"))
    assert cfg.teacher.run == os.path.join(root, "runs", "mnist1d-teacher")
    assert cfg.output_dir == os.path.join(root, "runs")
    over = load_config(os.path.join(root, "configs", "recipes", "consistent.yaml"),
                       ["teacher.run=mine", "output_dir=out"])
    assert over.teacher.run == "mine" and over.output_dir == "out"  # typed at the shell


def test_a_teacher_next_to_the_config_is_found_from_elsewhere(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    base = synthetic_config(tmp_path, train={"epochs": 1, "latency": False})
    teacher = {**base, "name": "teacher", "output_dir": "runs"}
    student = {**base, "name": "kd", "output_dir": "runs", "teacher": {"run": "runs/teacher"},
               "losses": [{"name": "kd"}]}
    (project / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    (project / "kd.yaml").write_text(yaml.safe_dump(student))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", str(project / "teacher.yaml"), "--quiet"]) == 0
    assert main(["distill", str(project / "kd.yaml"), "--quiet"]) == 0
    assert (project / "runs" / "kd" / "summary.json").is_file()
    assert not (elsewhere / "runs").exists()
    # the run's own config.yaml holds resolved paths: resume reads it as it is
    resumed = api.load_run_summary(project / "runs" / "kd")
    assert resumed["test"]["agreement"] is not None
