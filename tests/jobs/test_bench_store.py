"""A tiny store benchmark: every figure is written, finite and explained; targets never asserted."""

import json
import math

import pytest
import yaml

from kdforge.cli import main
from kdforge.core.errors import ConfigError
from kdforge.jobs.bench_store import RUNS, TARGETS, generation_batches, run_store_bench
from kdforge.jobs.bench_store_spec import load_store_spec
from kdforge.store import StoreLayout


def tiny_spec(tmp_path):
    spec = {
        "output_dir": str(tmp_path / "runs"),
        "seed": 0,
        "seeds": [0, 1],         # two seeds of every student run, taking turns epoch by epoch
        "device": "cpu",
        # 128 samples, a quarter held out for validation: 96 training samples
        "data": {"name": "synthetic", "input_shape": [1, 8, 8], "num_train": 128,
                 "num_test": 32, "num_classes": 4, "batch_size": 32, "val_fraction": 0.25},
        "teacher": {"model": {"name": "cnn2d"}, "epochs": 2, "optim": {"name": "sgd", "lr": 0.05}},
        "student": {"name": "mlp", "hidden": [8]},
        "epochs": 2,
        "optim": {"name": "sgd", "lr": 0.05},
        "view": {"scale": [0.35, 1.0], "flip": 0.0},
        "losses": [{"name": "kd", "T": 4}],
        "store": {"views_per_sample": 4, "top_k": 3, "value_formats": ["uint8", "fp16"],
                  "batch_size": 64, "samples_per_shard": 64},
        "timing": {"repeats": 2, "steps": 3},
    }
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_store_benchmark_writes_every_figure(tmp_path):
    out = run_store_bench(tiny_spec(tmp_path), results=tmp_path / "results", verbose=False)
    written = json.loads((tmp_path / "results" / "store.json").read_text())
    assert written == json.loads(json.dumps(out))
    assert all(not isinstance(v, (dict, list)) for v in written.values())  # flat
    figures = [
        "generation_views_per_s", "bare_teacher_views_per_s", "generation_vs_bare",
        "store_vs_supervised", "store_vs_online", "teacher_forward_samples_per_s",
        "student_step_samples_per_s", "ideal_online_samples_per_s", "online_vs_ideal",
        "teacher_cost_ratio", "teacher_accuracy", "total_time_s", "store_vs_online_accuracy",
    ]
    for run in (*RUNS, "store_kd_uint8", "store_kd_fp16"):
        figures += [f"{run}_{key}" for key in ("samples_per_s", "accuracy", "accuracy_std",
                                               "agreement", "kl")]
    for key in figures:
        assert isinstance(written[key], (int, float)) and math.isfinite(written[key]), key
    for key in (*TARGETS, "generation_views_per_s", "bare_teacher_views_per_s"):
        if key != "store_vs_online_accuracy":  # a difference of accuracies, in points
            assert written[key] > 0, key
    assert written["timed_epochs"] == 2  # 2 seeds x (2 epochs - the warm-up epoch)
    assert written["store_vs_online_accuracy"] == pytest.approx(
        100 * (written["store_kd_accuracy"] - written["online_kd_accuracy"]))
    runs = tmp_path / "runs" / "runs"
    assert {p.name for p in runs.iterdir()} == {
        f"{name}-seed{seed}" for seed in (0, 1)
        for name in ("supervised", "online_kd", "store_kd-uint8", "store_kd-fp16")}
    assert written["store_views"] == 96 * 4 and written["num_train"] == 96
    for fmt in ("uint8", "fp16"):
        layout = StoreLayout(num_samples=96, views_per_sample=4, num_classes=4, top_k=3,
                             value_format=fmt, view_kind="image")
        assert written[f"bytes_per_view_{fmt}"] == layout.bytes_per_view
    assert written["bytes_per_view"] == 14  # uint8, k=3: indices 6 + values 3 + crop 4 + flag 1
    assert written["store_kd_accuracy"] == written["store_kd_uint8_accuracy"]
    table = (tmp_path / "results" / "store.md").read_text()
    for figure in TARGETS:
        line = next(line for line in table.splitlines() if line.startswith(f"| {figure}:"))
        assert "PASS" in line or "MISS" in line
    assert "39 bytes per crop" in table and "| fp16 | 17 |" in table


def test_generation_batches_mirror_the_generator():
    # 10 samples, 4 views, 3 samples per chunk, shards of 5 samples: chunks 3+2 per shard
    assert generation_batches(10, 4, 12, 5) == [12, 8, 12, 8]
    assert generation_batches(3, 50, 16, 4096) == [50, 50, 50]  # at least one sample a chunk


def test_store_benchmark_cli(tmp_path, capsys):
    path = tiny_spec(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["store"]["value_formats"] = ["fp16"]
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", "store", "--spec", str(path), "--results", str(tmp_path / "r"),
                 "--epochs", "1"]) == 0
    assert "store.md" in capsys.readouterr().out
    assert (tmp_path / "r" / "store.json").is_file()
    spec["view"] = {"name": "independent"}
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", "store", "--spec", str(path)]) == 2
    assert "consistent" in capsys.readouterr().err


def test_store_benchmark_spec_fills_defaults_and_names_bad_keys(tmp_path):
    path = tiny_spec(tmp_path)
    spec = load_store_spec(path)
    assert spec["seeds"] == [0, 1] and spec["augment"] == {"scale": [0.35, 1.0], "flip": 0.0}
    assert spec["store"]["value_formats"] == ["uint8", "fp16"] and spec["store"]["repeats"] == 1
    assert spec["teacher"]["optim"] == {"name": "sgd", "lr": 0.05}
    assert spec["teacher"]["schedule"] == {} and spec["timing"] == {"repeats": 2, "steps": 3}
    raw = yaml.safe_load(path.read_text())
    minimal = {k: raw[k] for k in ("data", "teacher", "student")}
    path.write_text(yaml.safe_dump(minimal))
    spec = load_store_spec(path)
    assert spec["seeds"] == [0] and spec["epochs"] == 15 and spec["teacher"]["epochs"] == 2
    assert spec["store"]["value_formats"] == ["uint8"] and spec["losses"] == [{"name": "kd",
                                                                                "T": 4}]
    bad = [
        ({"store": {"views": 3}}, r"store\.views: unknown key.*views_per_sample"),
        ({"timing": {"steps": 0}}, r"timing\.steps: Input should be greater than 0"),
        ({"seeds": [1, 1]}, "distinct integers"),
        ({"seeds": [True]}, "seeds.0"),
        ({"store": {"value_formats": ["int4"]}}, "value_formats"),
        ({"store": {"value_format": "fp16", "value_formats": ["fp16"]}}, "not both"),
        ({"teacher": {"model": {"channels": [8]}}}, "must name a model"),
        ({"view": {"name": "independent"}}, "must be 'consistent'"),
        ({"epochs": "many"}, "epochs"),
        ({"surprise": 1}, "surprise: unknown key"),
    ]
    for change, pattern in bad:
        path.write_text(yaml.safe_dump({**minimal, **change}))
        with pytest.raises(ConfigError, match=pattern):
            load_store_spec(path)
    path.write_text(yaml.safe_dump({k: raw[k] for k in ("data", "student")}))
    with pytest.raises(ConfigError, match="teacher: required key is missing"):
        load_store_spec(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_store_spec(tmp_path / "nowhere.yaml")
