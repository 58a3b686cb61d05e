"""The report of real (tiny) runs: predictions written at the end of a run, every section of
the page, the CLI command; and the report package reads files only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge import api
from kdforge.cli import main
from kdforge.config import parse_config
from kdforge.report.runs import read_predictions
from tests.conftest import synthetic_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A teacher and a KD student over two seeds (NAME-seedS), 2 epochs each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    fast = {"epochs": 2, "latency": False, "tensorboard": False}
    teacher = api.train(parse_config(synthetic_config(root, name="teacher", train=fast,
                                                      student={"name": "mlp",
                                                               "hidden": [32]})),
                        verbose=False)
    for seed in (0, 1):
        cfg = synthetic_config(root, name=f"kd-seed{seed}", seed=seed, train=fast,
                               teacher={"run": str(teacher.run_dir)},
                               losses=[{"name": "ce", "weight": 0.5},
                                       {"name": "kd", "weight": 0.5, "T": 2}])
        api.train(parse_config(cfg), verbose=False)
    torch.set_num_threads(threads)
    return root / "runs"


def test_a_run_writes_its_test_predictions(study):
    summary = api.load_run_summary(study / "kd-seed0")
    preds = read_predictions(study / "kd-seed0")
    assert preds is not None and set(preds) >= {"student", "teacher", "targets"}
    n = len(preds["targets"])
    assert n == 64 and preds["student"].shape == preds["teacher"].shape == (64, 4)
    accuracy = float(np.mean(preds["student"].argmax(1) == preds["targets"]))
    agreement = float(np.mean(preds["student"].argmax(1) == preds["teacher"].argmax(1)))
    assert accuracy == pytest.approx(summary["test"]["accuracy"], abs=2 / n)  # float16 ties
    assert agreement == pytest.approx(summary["test"]["agreement"], abs=2 / n)
    teacher = read_predictions(study / "teacher")
    assert "teacher" not in teacher  # a run without a teacher stores its own logits only
    assert np.array_equal(teacher["targets"], preds["targets"])


def test_the_page_has_every_section(study, tmp_path):
    assert main(["report", str(study), "--output", str(tmp_path / "rep"),
                 "--title", "tiny study"]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    markdown = (tmp_path / "rep" / "report.md").read_text()
    for heading in ("Comparison across runs", "Learning curves", "Fidelity versus accuracy",
                    "Calibration and disagreements"):
        assert heading in html and heading in markdown
    assert "<script" not in html and not re.search(r'(src|href)="(https?:|//)', html)
    assert html.count("data:image/png;base64,") == 2 + 2  # curves, fidelity, 2 groups
    assert "| kd | " in markdown and "| teacher | " in markdown
    kd_row = next(line for line in markdown.splitlines() if line.startswith("| kd | "))
    assert kd_row.split(" | ")[2] == "2"  # two seeds in one group, shown as mean ± std
    assert "±" in kd_row
    assert "disagreement" in markdown and "teacher ECE" in markdown
    assert (tmp_path / "rep" / "img" / "curves.png").is_file()


def test_default_output_is_beside_the_runs(study):
    assert main(["report", str(study / "kd-seed0"), str(study / "kd-seed1")]) == 0
    assert (study / "report" / "report.html").is_file()
    assert (study / "report" / "report.md").is_file()


def test_report_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("kdforge: error: no run directory")


ALLOWED = {"kdforge.report", "kdforge.core.errors", "kdforge.core.files"}


def test_the_report_package_imports_nothing_of_training():
    package = Path(__import__("kdforge.report").report.__file__).parent
    for file in package.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("kdforge"):
                    assert any(name == a or name.startswith(a + ".") for a in ALLOWED), \
                        f"{file.name} imports {name}"
                assert not name.startswith("torch"), f"{file.name} imports {name}"
