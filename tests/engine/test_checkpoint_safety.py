"""No checkpoint, weights file or run model that a user hands kdforge can run code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.engine.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import synthetic_config


class Exploit:
    """Unpickling this writes a marker file: proof that the loader ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker) -> None:
    path.write_bytes(pickle.dumps({"epoch": 1, "payload": Exploit(str(marker))}))


@pytest.fixture
def finished_run(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, train={"epochs": 1}))
    return api.train(cfg, verbose=False).run_dir


def test_a_planted_pickle_checkpoint_is_refused_without_running(finished_run, tmp_path):
    marker = tmp_path / "pwned"
    (finished_run / "checkpoint.safetensors").unlink()
    plant(finished_run / "checkpoint.pt", marker)
    with pytest.raises(CheckpointError, match="pickle"):
        api.resume(finished_run, verbose=False)
    assert not marker.exists()


def test_a_pickle_named_like_a_safe_checkpoint_is_refused_without_running(finished_run, tmp_path):
    marker = tmp_path / "pwned"
    plant(finished_run / "checkpoint.safetensors", marker)
    with pytest.raises(CheckpointError, match="unreadable"):
        api.resume(finished_run, verbose=False)
    assert not marker.exists()


def test_planted_run_weights_and_teacher_weights_do_not_run(finished_run, tmp_path):
    marker = tmp_path / "pwned"
    plant(finished_run / "model.safetensors", marker)
    with pytest.raises(CheckpointError):
        api.evaluate_run(finished_run)
    teacher = synthetic_config(tmp_path, name="kd",
                               teacher={"name": "mlp", "hidden": [16],
                                        "weights": str(tmp_path / "teacher.pt")},
                               losses=[{"name": "kd"}])
    plant(tmp_path / "teacher.pt", marker)
    with pytest.raises(ConfigError, match="weights_only"):
        api.train(parse_config(teacher), verbose=False)
    assert not marker.exists()


def test_checkpoint_round_trip_keeps_types(tmp_path):
    state = {"epoch": 3, "betas": (0.9, 0.999), "inf": float("inf"), "none": None,
             "by_int": {0: torch.arange(3), 7: {"step": torch.tensor(2.0)}}, "names": ["a"]}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["betas"] == (0.9, 0.999) and back["inf"] == float("inf") and back["none"] is None
    assert torch.equal(back["by_int"][0], torch.arange(3)) and list(back["by_int"]) == [0, 7]
    with pytest.raises(CheckpointError, match="cannot store a object"):
        save_checkpoint(tmp_path / "d.safetensors", {"x": object()})
