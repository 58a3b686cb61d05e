"""Training with a view: deterministic, resumable, and function matching without labels."""

import pytest
import torch

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.engine.checkpoint import load_checkpoint
from tests.conftest import synthetic_config


def teacher_run(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, name="teacher", student={"name": "cnn2d"}))
    return api.train(cfg, verbose=False).run_dir


def fm_config(tmp_path, teacher, **extra):
    return synthetic_config(
        tmp_path, name="fm", student={"name": "mlp", "hidden": [16]},
        teacher={"run": str(teacher)}, view={"name": "function_matching"},
        losses=[{"name": "kd", "T": 1}], train={"epochs": 4}, **extra)


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.safetensors")["modules"]["student"]


def test_function_matching_run_is_deterministic_and_resumable(tmp_path):
    teacher = teacher_run(tmp_path)
    full = api.train(parse_config(fm_config(tmp_path, teacher)), verbose=False)
    again = api.train(parse_config({**fm_config(tmp_path, teacher), "name": "again"}),
                      verbose=False)
    w1, w2 = weights(full.run_dir), weights(again.run_dir)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    def stop(trainer, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = parse_config({**fm_config(tmp_path, teacher), "name": "cut"})
    with pytest.raises(KeyboardInterrupt):
        api.train(cut, verbose=False, callbacks=[stop])
    api.resume(tmp_path / "runs" / "cut", verbose=False)
    w3 = weights(tmp_path / "runs" / "cut")
    assert all(torch.equal(w1[k], w3[k]) for k in w1)
    assert 0 <= full.summary["test"]["agreement"] <= 1


def test_ce_under_function_matching_without_labels_is_explained(tmp_path):
    teacher = teacher_run(tmp_path)
    cfg = fm_config(tmp_path, teacher)
    cfg["losses"] = [{"name": "ce"}, {"name": "kd"}]
    with pytest.raises(ConfigError, match="needs labels"):
        api.train(parse_config(cfg), verbose=False)
    cfg["view"] = {"name": "function_matching", "labels": True}
    api.train(parse_config({**cfg, "name": "fm-labels"}), verbose=False)
