"""``kdforge doctor``: versions, devices and extras; a failing check is one line, exit 0."""

from __future__ import annotations

import json

import pytest

from kdforge.cli import main
from kdforge.jobs import doctor


@pytest.fixture
def fake_checks(monkeypatch):
    def broken() -> str:
        raise RuntimeError("the kernel exploded\nsecond line")

    checks = {extra: (lambda: "fine") for extra in doctor.extras()}
    checks["export"] = broken
    monkeypatch.setattr(doctor, "CHECKS", checks)
    monkeypatch.setattr(doctor, "version", lambda dist: None if dist == "torchao" else "1.0")


def test_doctor_json_parses(fake_checks, capsys):
    assert main(["doctor", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["versions"]["python"] and "torch_threads" in found["devices"]
    extras = {row["extra"]: row for row in found["extras"]}
    assert set(extras) >= {"vision", "data", "export", "compress", "tensorboard", "shampoo"}
    assert extras["vision"]["works"] is True
    assert extras["export"]["works"] is False
    assert extras["export"]["note"] == "RuntimeError: the kernel exploded"
    assert extras["compress"]["installed"] is False
    assert "pip install 'kdforge[compress]'" in extras["compress"]["note"]


def test_doctor_table(fake_checks, capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "optional extras" in out and "kernel exploded" in out and "Traceback" not in out


def test_a_real_check_runs():
    pytest.importorskip("tensorboard")
    assert "event file" in doctor.CHECKS["tensorboard"]()
