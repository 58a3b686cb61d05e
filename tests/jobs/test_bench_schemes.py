"""``kdforge bench schemes``: records per scheme and variant, baselines, resumability."""

import json

import yaml

from kdforge.jobs.bench_schemes import run_schemes_bench
from tests.conftest import synthetic_config

FIELDS = {"scheme", "dataset", "student", "seeds", "test_accuracy", "test_accuracy_std",
          "baseline_accuracy", "kd_accuracy", "agreement", "train_seconds", "variant"}


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_bench_schemes_writes_flat_records_with_baselines_and_resumes(tmp_path, monkeypatch):
    base = synthetic_config(tmp_path, train={"epochs": 1})
    teacher = write(tmp_path / "teacher.yaml", {**base, "student": {"name": "mlp",
                                                                    "hidden": [32]}})
    kd = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "T": 2}]
    dml = write(tmp_path / "dml.yaml", {**base, "scheme": {"name": "dml", "peers": [
        {"name": "mlp", "hidden": [8]}]}})
    takd = write(tmp_path / "takd.yaml", {**base, "losses": kd, "teacher": {"run": "set-by-bench"},
                                          "scheme": {"name": "takd", "assistants": [
                                              {"name": "mlp", "hidden": [24]}]}})
    spec = write(tmp_path / "spec.yaml", {
        "seeds": [0, 1], "work": str(tmp_path / "work"),
        "teachers": {"t": {"config": teacher}},
        "schemes": {"dml": {"config": dml}, "takd": {"config": takd, "teachers": ["t"]}}})
    out = run_schemes_bench(spec, results=tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "schemes.json").read_text())
    assert saved == json.loads(json.dumps(out))
    rows = {(r["scheme"], r["variant"]): r for r in saved["runs"]}
    assert set(rows) == {("dml", "student"), ("dml", "peer1"), ("dml", "ensemble"),
                         ("takd", None), ("takd", "assistant-1")}
    for row in rows.values():
        assert FIELDS <= set(row) and row["seeds"] == 2 and row["dataset"] == "synthetic"
        assert 0 <= row["test_accuracy"] <= 100 and row["test_accuracy_std"] >= 0
    assert rows[("dml", "student")]["baseline_accuracy"] is not None
    assert rows[("dml", "student")]["kd_accuracy"] is None  # no teacher in dml
    assert rows[("dml", "ensemble")]["baseline_accuracy"] is None  # not one model
    assert rows[("takd", None)]["kd_accuracy"] is not None
    assert 0 <= rows[("takd", None)]["agreement"] <= 100
    assert "| takd |" in (tmp_path / "results" / "schemes.md").read_text()

    # a second call trains nothing: every run is read back
    from kdforge import stages

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(stages.api, "train", refuse)
    again = run_schemes_bench(spec, results=tmp_path / "results")
    strip = [{k: v for k, v in r.items() if k != "train_seconds"} for r in again["runs"]]
    assert strip == [{k: v for k, v in r.items() if k != "train_seconds"} for r in out["runs"]]

    # one entry rerun (--schemes takd) replaces its rows and keeps the others', in order
    saved = json.loads((tmp_path / "results" / "schemes.json").read_text())
    saved["runs"] = [dict(r, test_accuracy=-1.0) if r["entry"] == "takd" else r
                     for r in saved["runs"]]
    (tmp_path / "results" / "schemes.json").write_text(json.dumps(saved))
    partial = run_schemes_bench(spec, results=tmp_path / "results", schemes=["takd"])
    assert [(r["entry"], r["variant"]) for r in partial["runs"]] == [
        (r["entry"], r["variant"]) for r in out["runs"]]
    assert all(r["test_accuracy"] >= 0 for r in partial["runs"])
    assert "| dml |" in (tmp_path / "results" / "schemes.md").read_text()
