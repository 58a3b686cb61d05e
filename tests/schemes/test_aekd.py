"""The ``aekd`` scheme: a student distilled from an ensemble of teachers, by a rule."""

import json

import pytest
import torch

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.losses.ensemble import AEKD
from kdforge.losses.response import KD
from kdforge.schemes import build_scheme
from tests.conftest import synthetic_config, train_until


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two small teachers of different architectures and seeds, and one of other classes."""
    root = tmp_path_factory.mktemp("teachers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    try:
        for key, seed, model, data in [
            ("wide", 0, {"name": "mlp", "hidden": [32]}, {}),
            ("deep", 1, {"name": "mlp", "hidden": [16, 16]}, {}),
            ("three", 0, {"name": "mlp", "hidden": [16]}, {"num_classes": 3}),
        ]:
            cfg = synthetic_config(root, name=key, seed=seed, student=model, data=data,
                                   train={"epochs": 3})
            runs[key] = str(api.train(parse_config(cfg), verbose=False).run_dir)
    finally:
        torch.set_num_threads(threads)
    return runs


def aekd_config(tmp_path, teachers, name="aekd", keys=("wide", "deep"), scheme=None,
                losses=None, **sections):
    scheme = {"name": "aekd", "C": 0.6, "names": list(keys), **(scheme or {})}
    losses = losses or [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}]
    return synthetic_config(tmp_path, name=name, teacher=[{"run": teachers[k]} for k in keys],
                            scheme=scheme, losses=losses, **sections)


def test_aekd_end_to_end_with_a_feature_of_a_named_member(tmp_path, teachers):
    losses = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4},
              {"name": "fitnet", "weight": 1.0, "student_layer": "blocks.0",
               "teacher_layer": "deep:blocks.1"}]  # only the 'deep' teacher has blocks.1
    result = api.train(parse_config(aekd_config(tmp_path, teachers, losses=losses)),
                       verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] == "aekd" and record["student"] == "mlp"
    assert record["teachers"] == 2
    weights = [record["teacher_weight_0"], record["teacher_weight_1"]]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert all(0.4 - 1e-6 <= w <= 0.6 + 1e-6 for w in weights)  # the bound C = 0.6
    assert 0.0 <= record["test_accuracy"] <= 100.0
    assert record["agreement"] == pytest.approx(100 * result.summary["test"]["agreement"])
    assert record["teacher_accuracy_0"] > 50 and record["ensemble_accuracy"] > 50
    last = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert any("aekd" in key for key in last) and any("fitnet" in key for key in last)
    assert not any(key.endswith("/kd") for key in last)  # kd was replaced, not added


def build(tmp_path, teachers, **kwargs):
    cfg = parse_config(aekd_config(tmp_path, teachers, **kwargs))
    return api.build_distiller(cfg, api.build_data(cfg), scheme=build_scheme(cfg.scheme))


def test_each_rule_builds_its_teacher_and_terms(tmp_path, teachers):
    aekd = build(tmp_path, teachers, scheme={"C": 0.7, "iterations": 3, "per": "sample"})
    (term,) = [t for t in aekd.terms if not t.name == "ce"]
    assert isinstance(term, AEKD) and (term.weight, term.T, term.C) == (0.9, 4.0, 0.7)
    assert (term.iterations, term.per) == (3, "sample")
    logits = build(tmp_path, teachers, scheme={"rule": "mean_logits"})
    assert logits.teacher.combine == "mean_logits"
    assert any(isinstance(t, KD) for t in logits.terms)
    fixed = build(tmp_path, teachers, scheme={"rule": "weights"}, ensemble_weights=[3, 1])
    assert fixed.teacher.weights.tolist() == pytest.approx([0.75, 0.25])
    for step in (aekd, logits, fixed):  # fidelity: always the equal-weight mean of the probs
        assert step.eval_teacher.combine == "mean_probs"
        assert step.eval_teacher.weights.tolist() == pytest.approx([0.5, 0.5])


def test_plain_rule_record_reports_its_fixed_weights(tmp_path, teachers):
    cfg = aekd_config(tmp_path, teachers, scheme={"rule": "weights"}, ensemble_weights=[1, 3],
                      train={"epochs": 1})
    (record,) = api.train(parse_config(cfg), verbose=False).summary["records"]
    assert record["variant"] == "weights"
    assert [record["teacher_weight_0"], record["teacher_weight_1"]] == pytest.approx([0.25, 0.75])


def test_resume_after_an_interruption_gives_the_same_student(tmp_path, teachers):
    cfg = parse_config(aekd_config(tmp_path, teachers, train={"epochs": 3},
                                   student={"name": "mlp", "hidden": [16], "dropout": 0.2}))
    full = api.train(cfg, verbose=False)

    train_until(cfg, 1)
    run_dir = tmp_path / "runs" / "cut"
    assert not (run_dir / "model.safetensors").exists()
    resumed = api.resume(run_dir, verbose=False)

    def weights(r):
        return load_checkpoint(r.run_dir / "checkpoint.safetensors")["modules"]["student"]

    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["test"] == full.summary["test"]
    drop = ("run_dir", "train_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.summary["records"]] \
        == [{k: v for k, v in r.items() if k not in drop} for r in full.summary["records"]]


@pytest.mark.parametrize("change, message", [
    ({"keys": ("wide",)}, "two or more trained teachers"),
    ({"keys": ("wide", "three")}, r"predict the run's 4 classes.*wide .*: 4, three .*: 3"),
    ({"losses": [{"name": "kd", "T": 4}, {"name": "fitnet", "student_layer": "blocks.0",
                                          "teacher_layer": "nope:blocks.0"}]},
     "no member 'nope'.*wide, deep"),
    ({"scheme": {"C": 0.4}}, r"scheme.C = 0.4 with 2 teachers.*at least 1/2"),
    ({"ensemble_weights": [1, 2]}, "remove them, or set scheme.rule: weights"),
    ({"scheme": {"rule": "weights"}}, "one non-negative weight per teacher"),
    ({"scheme": {"rule": "vote"}}, "ensemble rule"),
    ({"losses": [{"name": "ce"}]}, "give 'losses' a kd term"),
    ({"scheme": {"rule": "mean_probs"}, "losses": [{"name": "aekd"}]}, "use plain 'kd'"),
    ({"scheme": {"names": ["only"]}}, "1 names for 2 teachers"),
])
def test_bad_configs_are_refused_before_training(tmp_path, teachers, change, message):
    change = dict(change)
    keys = change.pop("keys", ("wide", "deep"))
    if "scheme" in change and "names" not in change["scheme"]:
        change["scheme"] = {"names": list(keys), **change["scheme"]}
    cfg = aekd_config(tmp_path, teachers, keys=keys, **change)
    with pytest.raises(ConfigError, match=message):
        api.train(parse_config(cfg), verbose=False)
    assert not (tmp_path / "runs" / "aekd" / "checkpoint.safetensors").exists()
