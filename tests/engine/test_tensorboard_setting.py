"""``train.tensorboard``: auto (when tensorboard imports), true (required), false."""

from __future__ import annotations

import pytest

from kdforge.config import TrainConfig
from kdforge.core.errors import ConfigError
from kdforge.engine import logging as run_logging
from kdforge.engine.logging import TensorBoardLog


def test_default_is_auto_and_booleans_still_parse():
    assert TrainConfig().tensorboard == "auto"
    assert TrainConfig(tensorboard=True).tensorboard is True
    assert TrainConfig(tensorboard="false").tensorboard is False
    with pytest.raises(ValueError):
        TrainConfig(tensorboard="sometimes")


def test_open_follows_the_setting(tmp_path, monkeypatch):
    assert TensorBoardLog.open(tmp_path, False) is None
    monkeypatch.setattr(run_logging, "tensorboard_available", lambda: False)
    assert TensorBoardLog.open(tmp_path, "auto") is None  # not installed: JSONL only
    assert not (tmp_path / "tensorboard").exists()


def test_true_without_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert run_logging.tensorboard_available() is False
    assert TensorBoardLog.open(tmp_path, "auto") is None
    with pytest.raises(ConfigError, match="pip install 'kdforge\\[tensorboard\\]'"):
        TensorBoardLog.open(tmp_path, True)


def test_auto_writes_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    board = TensorBoardLog.open(tmp_path, "auto")
    assert board is not None
    board.append({"epoch": 1, "train/loss": 0.5})
    board.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
