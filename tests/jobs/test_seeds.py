"""kdforge train CONFIG --seeds: one run per seed, '{seed}' paths, mean and spread."""

from __future__ import annotations

import json

import pytest
import yaml

from kdforge.cli import main
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.jobs.seeds import parse_seeds, run_seeds, seeded, seeds_table
from tests.conftest import synthetic_config


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0-1, 1") == [5, 0, 1]
    for bad in ("a", "3-1", "", "1,,x", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_seeded_replaces_the_placeholder_and_names_the_run(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, teacher={"run": "runs/t-seed{seed}"},
                                        losses=[{"name": "kd"}]))
    one = seeded(cfg, 7, "kd-seed7")
    assert one.seed == 7 and one.name == "kd-seed7" and one.teacher.run == "runs/t-seed7"
    assert cfg.teacher.run == "runs/t-seed{seed}"  # the original is untouched


def test_seeds_run_a_teacher_per_seed_and_summarise(tmp_path, capsys):
    base = synthetic_config(tmp_path, train={"epochs": 1, "latency": False})
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({**base, "name": "teacher"}))
    kd = {**base, "name": "kd", "teacher": {"run": str(tmp_path / "runs" / "teacher-seed{seed}")},
          "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(kd))
    assert main(["train", str(tmp_path / "teacher.yaml"), "--seeds", "0,1", "--quiet"]) == 0
    assert main(["distill", str(tmp_path / "kd.yaml"), "--seeds", "0-1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| mean ± std |" in out and "kd-seed1" in out
    study = json.loads((tmp_path / "runs" / "kd-seeds.json").read_text())
    assert study["seeds"] == [0, 1] and len(study["runs"]) == 2
    accs = [r["accuracy"] for r in study["runs"]]
    assert study["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert study["accuracy"]["n"] == 2
    for seed in (0, 1):
        written = yaml.safe_load((tmp_path / "runs" / f"kd-seed{seed}" / "config.yaml")
                                 .read_text())
        assert written["teacher"]["run"].endswith(f"teacher-seed{seed}")
        assert written["seed"] == seed
    # a second call reuses the finished runs (same numbers, nothing retrained)
    mtime = (tmp_path / "runs" / "kd-seed0" / "model.safetensors").stat().st_mtime_ns
    again = run_seeds(parse_config(kd), [0, 1], verbose=False)
    assert [r["accuracy"] for r in again["runs"]] == accs
    assert (tmp_path / "runs" / "kd-seed0" / "model.safetensors").stat().st_mtime_ns == mtime
    assert "mean ± std" in seeds_table(again)


def test_a_seed_directory_of_another_config_is_refused(tmp_path):
    base = parse_config(synthetic_config(tmp_path, train={"epochs": 1, "latency": False}))
    run_seeds(base, [0], verbose=False)
    (tmp_path / "runs" / "run-seed0" / "summary.json").unlink()  # looks interrupted
    other = base.model_copy(update={"optim": base.optim.model_copy(update={"lr": 0.5})})
    with pytest.raises(ConfigError, match="another config"):
        run_seeds(other, [0], verbose=False)
