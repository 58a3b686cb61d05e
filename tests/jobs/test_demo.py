"""`kdforge demo --quick` end to end: every run, the tables, the plots."""

import json

from kdforge.jobs.demo import SETTINGS, run_demo


def test_quick_demo_writes_tables_and_plots(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(out, quick=True, seeds=1, datasets=("digits",), verbose=False)
    assert set(results["digits"]) == {label for label, *_ in SETTINGS["digits"]}
    kd = results["digits"]["KD student"]
    assert kd["agreement"]["n"] == 1 and 0.0 <= kd["agreement"]["mean"] <= 1.0
    alone = results["digits"]["student alone"]["agreement"]
    assert alone == {"mean": None, "std": None, "n": 0}  # no teacher, no fidelity
    assert (out / "digits_val_accuracy.png").stat().st_size > 1000
    table = (out / "results.md").read_text()
    assert "| KD student |" in table and "ms/batch" in table
    assert json.loads((out / "results.json").read_text()) == results
    kd_cfg = (out / "digits" / "digits-kd-seed0" / "config.yaml").read_text()
    assert str(out / "digits" / "digits-teacher-seed0") in kd_cfg


def test_quick_demo_on_mnist1d_includes_the_view_students(tmp_path):
    results = run_demo(tmp_path / "demo", quick=True, seeds=1, datasets=("mnist1d",),
                       verbose=False)
    rows = results["mnist1d"]
    assert {"consistent KD", "function matching"} <= set(rows)
    assert rows["function matching"]["agreement"]["n"] == 1
    cfg = (tmp_path / "demo" / "mnist1d" / "recipe-function_matching-seed0" / "config.yaml")
    assert "function_matching" in cfg.read_text()
