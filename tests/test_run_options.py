"""Friction a new user met: a baseline's fidelity, the latency measurement, whose layer."""

from __future__ import annotations

import pytest

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from tests.conftest import synthetic_config


@pytest.fixture
def teacher_run(tmp_path):
    cfg = synthetic_config(tmp_path, name="teacher", train={"epochs": 1, "latency": False})
    return api.train(parse_config(cfg), verbose=False).run_dir


def test_a_student_alone_reports_its_fidelity_to_the_study_teacher(tmp_path, teacher_run):
    alone = synthetic_config(tmp_path, name="alone", train={"epochs": 1, "latency": False})
    plain = api.train(parse_config(alone), verbose=False).summary["test"]
    assert "agreement" not in plain
    measured = api.train(parse_config({**alone, "name": "alone-fid",
                                       "eval_teacher": {"run": str(teacher_run)}}),
                         verbose=False).summary
    assert 0.0 <= measured["test"]["agreement"] <= 1.0 and measured["test"]["kl"] >= 0.0
    assert measured["test"]["accuracy"] == plain["accuracy"]  # it never taught
    assert measured["teacher_params"] is None


def test_latency_can_be_turned_off(tmp_path):
    off = api.train(parse_config(synthetic_config(tmp_path, train={"epochs": 1,
                                                                   "latency": False})),
                    verbose=False).summary
    assert off["latency_ms"] is None
    on = api.train(parse_config(synthetic_config(tmp_path, name="on", train={"epochs": 1})),
                   verbose=False).summary
    assert on["latency_ms"] > 0


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_wrong_layer_name_says_whose_layer(tmp_path, teacher_run, side):
    layers = {"student": "blocks.9", "teacher": "blocks.9"}
    right = {"student": "blocks.0", "teacher": "blocks.0"}
    right[side] = layers[side]
    cfg = synthetic_config(tmp_path, name=f"bad-{side}", teacher={"run": str(teacher_run)},
                           losses=[{"name": "fitnet", "student_layer": right["student"],
                                    "teacher_layer": right["teacher"]}])
    with pytest.raises(ConfigError, match=f"unknown layer of the {side} \\(MLP\\) 'blocks.9'"):
        api.train(parse_config(cfg), verbose=False)
