"""Shared fixtures: small deterministic models and data, and an isolated cache directory."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path_factory):
    """Every test gets a private data cache, one intra-op thread and a fixed seed.

    One thread: the models here are tiny, and two OpenMP threads that share the CPU with
    another process (a second pytest-xdist worker) wait on each other, which once made a
    model test 100x slower.
    """
    monkeypatch.setenv("KDFORGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """(B, 1, 8, 8) -> (B, K): conv, BatchNorm (so BN statistics can be checked), linear."""

    def __init__(self, num_classes: int = 4, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture
def tiny_net():
    return TinyNet


def synthetic_config(tmp_path, **sections) -> dict:
    """A small, fast run config on the synthetic data set."""
    cfg = {
        "name": "run",
        "output_dir": str(tmp_path / "runs"),
        "data": {"name": "synthetic", "batch_size": 32, "num_train": 128, "num_test": 64,
                 "num_classes": 4, "val_fraction": 0.25},
        "student": {"name": "mlp", "hidden": [16]},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "device": "cpu"},
    }
    for key, value in sections.items():
        if key in ("data", "train", "optim", "schedule") and isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


class Interrupt(Exception):
    """Raised by :func:`train_until` to stop a run after an epoch, as a crash would."""


def train_until(cfg, epoch: int, name: str = "cut"):
    """Train a copy of ``cfg`` named ``name``, stopped after ``epoch`` epochs (its last
    checkpoint kept); returns the copy's run directory, ready for ``api.resume``."""
    from pathlib import Path

    from kdforge import api

    def stop(trainer, record):
        if record["epoch"] == epoch:
            raise Interrupt

    cut = cfg.model_copy(update={"name": name})
    with pytest.raises(Interrupt):
        api.train(cut, verbose=False, callbacks=[stop])
    return Path(cut.output_dir) / name
