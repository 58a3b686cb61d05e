"""``kdforge bench compress``: the original trained once, a pipeline per seed, records
averaged per pair and stage, resumable."""

import json

import yaml

from kdforge.jobs.bench_compress import run_compress_bench
from tests.conftest import synthetic_config

FIELDS = {"pair", "stage", "params", "file_bytes", "latency_ms_b1", "latency_ms_b4",
          "none_accuracy", "ce_accuracy", "kd_accuracy", "agreement", "seeds",
          "kd_accuracy_std"}


def test_bench_compress_averages_seeds_per_stage_and_reads_finished_runs_back(tmp_path,
                                                                               monkeypatch):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump(synthetic_config(
        tmp_path, name="t", student={"name": "mlp", "hidden": [32]}, train={"epochs": 2})))
    compress = tmp_path / "compress.yaml"
    compress.write_text(yaml.safe_dump({
        "name": "c", "run": "set-by-bench",
        "stages": [{"name": "prune", "method": "unstructured", "amount": 0.5}],
        "finetune": {"epochs": 1, "device": "cpu"},
        "latency": {"batches": [1, 4], "warmup": 1, "repeats": 2, "rounds": 1}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0, 1], "work": str(tmp_path / "work"),
                                    "pairs": {"tiny": {"teacher": str(teacher),
                                                       "compress": str(compress)}}}))
    out = run_compress_bench(spec, results=tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "compress.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert [r["stage"] for r in saved["runs"]] == ["original", "prune"]
    for row in saved["runs"]:
        assert FIELDS <= set(row) and row["pair"] == "tiny" and row["seeds"] == 2
    assert (tmp_path / "results" / "compress.png").is_file()
    assert "| tiny | prune |" in (tmp_path / "results" / "compress.md").read_text()
    assert (tmp_path / "work" / "tiny-s1" / "kd" / "prune" / "stage.json").is_file()

    from kdforge.engine.trainer import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished stage")

    monkeypatch.setattr(Trainer, "fit", refuse)
    again = run_compress_bench(spec, results=tmp_path / "results")
    strip = [{k: v for k, v in r.items() if not k.startswith("latency")} for r in again["runs"]]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("latency")}
                     for r in out["runs"]]
