"""A tiny version of the method grid: runs, records n/a and errors, writes its tables."""

import json

import yaml

from kdforge.cli import main
from kdforge.jobs.bench_grid import resolve_layers, run_grid


def tiny_grid(tmp_path):
    grid = {
        "seeds": [0, 1],
        "output_dir": str(tmp_path / "runs"),
        "optim": {"name": "sgd", "lr": 0.05},
        "device": "cpu",
        "pairs": {
            "tiny": {
                "data": {"name": "synthetic", "num_train": 96, "num_test": 32,
                         "batch_size": 32, "val_fraction": 0.25},
                "teacher": {"name": "mlp", "hidden": [32]},
                "student": {"name": "mlp", "hidden": [8]},
                "epochs": 2,
                "layers": {"embedding": {"student": "blocks.0", "teacher": "blocks.0"}},
            },
        },
        "methods": {
            "baseline": [{"name": "ce"}],
            "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}],
            "needs_stages": [{"name": "ce"}, {"name": "kd", "T": "$stages.student"}],
            "broken": [{"name": "ce"}, {"name": "kd", "T": -1}],
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_runs_methods_and_records_what_did_not_run(tmp_path):
    out = run_grid(tiny_grid(tmp_path), results=tmp_path / "results", verbose=False)
    methods = out["pairs"]["tiny"]["methods"]
    assert methods["baseline"]["status"] == "ok" and methods["baseline"]["accuracy"]["n"] == 2
    assert methods["kd"]["agreement"]["n"] == 2 and methods["baseline"]["agreement"]["n"] == 0
    assert methods["needs_stages"] == {"status": "n/a",
                                      "reason": "the pair defines no 'stages' layers"}
    assert methods["broken"]["status"] == "error" and "T must be > 0" in methods["broken"]["reason"]
    table = (tmp_path / "results" / "grid.md").read_text()
    assert "| kd |" in table and "n/a" in table
    assert json.loads((tmp_path / "results" / "grid.json").read_text())["seeds"] == [0, 1]


def test_layer_roles_resolve_to_names_and_lists():
    layers = {"stages": {"student": ["a", "b"], "teacher": ["c", "d"]},
              "hint": {"student": "x", "teacher": "y"}}
    assert resolve_layers({"s": "$hint.student", "t": "$stages.teachers", "h": "$hint.teachers"},
                          layers) == {"s": "x", "t": ["c", "d"], "h": ["y"]}


def test_bench_cli_subset(tmp_path, capsys):
    path = tiny_grid(tmp_path)
    assert main(["bench", "grid", "--grid", str(path), "--results", str(tmp_path / "r"),
                 "--methods", "baseline", "--seeds", "1"]) == 0
    assert "grid.md" in capsys.readouterr().out
    assert main(["bench", "grid", "--grid", str(path), "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
