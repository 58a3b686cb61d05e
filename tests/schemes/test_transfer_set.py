"""transfer_set (Stanton et al. 2021): one student per transfer set, the enlarged sets, the
fidelity measured on train and test, the equal-steps budget, resume and refusals."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdforge import api, stages
from kdforge.config import load_config, parse_config
from kdforge.core.errors import ConfigError
from kdforge.schemes import build_scheme
from kdforge.schemes.transfer_set import TRANSFER_SETS
from kdforge.stages import load_scheme_result
from tests.conftest import synthetic_config
from tests.schemes.spies import StageSpy

KD = [{"name": "kd", "T": 2}]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    cfg = synthetic_config(tmp_path_factory.mktemp("teacher"), name="teacher",
                           student={"name": "mlp", "hidden": [32]}, train={"epochs": 4})
    return api.train(parse_config(cfg), verbose=False).run_dir


def ts_config(tmp_path, teacher, name="ts", **options):
    scheme = {"name": "transfer_set", **options}
    return parse_config(synthetic_config(tmp_path, name=name, teacher={"run": str(teacher)},
                                         losses=KD, scheme=scheme))


def test_each_set_trains_one_student_with_fidelity_on_train_and_test(tmp_path, teacher_run):
    cfg = ts_config(tmp_path, teacher_run, sets=["original", "mixup", "cutmix"])
    api.train(cfg, verbose=False)
    records = load_scheme_result(tmp_path / "runs" / "ts")["records"]
    assert [r["variant"] for r in records] == ["original", "mixup", "cutmix"]
    data = api.build_data(cfg)
    for r in records:
        for key in ("train_agreement", "test_agreement", "train_kl", "test_kl",
                    "test_accuracy", "train_accuracy"):
            assert isinstance(r[key], float), (r["variant"], key)
        assert r["test_agreement"] == pytest.approx(r["agreement"])
        assert 0.0 <= r["train_agreement"] <= 100.0 and r["train_kl"] >= 0.0
    assert records[0]["transfer_size"] == len(data.train)
    assert records[1]["transfer_size"] is None  # mixed on the fly
    # the mixing sets train with the function-matching view of their mode, no crop
    mixed = load_config(Path(records[2]["run_dir"]) / api.CONFIG_FILE)
    assert mixed.view.name == "function_matching"
    assert mixed.view.options["mode"] == "cutmix" and mixed.view.options["scale"] == [1.0, 1.0]
    assert load_config(Path(records[0]["run_dir"]) / api.CONFIG_FILE).view is None


def test_train_fidelity_is_measured_against_the_teacher_on_the_training_inputs(
        tmp_path, teacher_run):
    cfg = ts_config(tmp_path, teacher_run, sets=["original"])
    api.train(cfg, verbose=False)
    record = load_scheme_result(tmp_path / "runs" / "ts")["records"][0]
    from kdforge.models.runs import load_run_model

    student, teacher = load_run_model(record["run_dir"]).eval(), load_run_model(teacher_run).eval()
    train = api.build_data(cfg).train
    x = torch.stack([train[i]["input"] for i in range(len(train))])
    with torch.no_grad():
        s, t = student(x), teacher(x)
    agree = (s.argmax(1) == t.argmax(1)).float().mean().item()
    kl = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean().item()
    assert record["train_agreement"] == pytest.approx(100.0 * agree, abs=1e-3)
    assert record["train_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_unlabelled_inputs_are_labelled_by_the_teacher_and_enlarge_the_set(
        tmp_path, teacher_run):
    unlabelled = {"name": "synthetic", "num_train": 64, "num_test": 8, "num_classes": 4,
                  "draw_seed": 3}
    cfg = ts_config(tmp_path, teacher_run, sets=["original", "unlabelled"],
                    unlabelled=unlabelled)
    api.train(cfg, verbose=False)
    root = tmp_path / "runs" / "ts"
    records = load_scheme_result(root)["records"]
    n = len(api.build_data(cfg).train)
    assert records[1]["transfer_size"] == n + 64
    saved = load_file(str(root / "unlabelled.safetensors"))
    assert saved["inputs"].shape == (64, 1, 8, 8)
    from kdforge.models.runs import load_run_model

    with torch.no_grad():
        probs = load_run_model(teacher_run).eval()(saved["inputs"]).softmax(1)
    assert torch.allclose(saved["teacher_probs"], probs, atol=1e-6)
    # the stage trains on the enlarged set; equal steps: fewer epochs (2 * 96 / 160 -> 1)
    stage = load_config(Path(records[1]["run_dir"]) / api.CONFIG_FILE)
    assert stage.scheme.name == "transfer_set-stage"
    assert stage.train.epochs == max(1, round(2 * n / (n + 64)))
    data = build_scheme(stage.scheme).adapt_data(stage, api.build_data(stage))
    assert len(data.train) == n + 64
    assert torch.equal(data.train[n]["input"], saved["inputs"][0])
    assert int(data.train[n]["target"]) == int(probs[0].argmax())


def test_synthesized_files_are_added_and_capped(tmp_path, teacher_run):
    path = tmp_path / "synth.safetensors"
    x = torch.randn(30, 1, 8, 8)
    probs = torch.softmax(torch.randn(30, 4), 1)
    save_file({"inputs": x, "targets": torch.zeros(30, dtype=torch.int64),
               "teacher_probs": probs}, str(path))
    cfg = ts_config(tmp_path, teacher_run, sets=["synthesized"], synthesized=[str(path)],
                    extra_size=10, budget="equal_epochs")
    api.train(cfg, verbose=False)
    record = load_scheme_result(tmp_path / "runs" / "ts")["records"][0]
    assert record["transfer_size"] == len(api.build_data(cfg).train) + 10
    stage = load_config(Path(record["run_dir"]) / api.CONFIG_FILE)
    assert stage.train.epochs == 2  # equal_epochs
    (extra,) = stage.scheme.options["extra"]
    assert torch.equal(load_file(extra)["inputs"], x[:10])


def test_an_interrupted_sequence_resumes_the_unfinished_set_only(tmp_path, teacher_run,
                                                                  monkeypatch):
    cfg = ts_config(tmp_path, teacher_run, sets=["original", "mixup"])
    spy = StageSpy(monkeypatch, interrupt="mixup")
    with pytest.raises(StageSpy.Stop):
        stages.run_sequence(cfg, verbose=False)
    stages.run_sequence(cfg, verbose=False)
    assert spy.calls == [("original", False), ("mixup", False), ("mixup", True)]


@pytest.mark.parametrize("change, message", [
    ({"losses": [{"name": "ce"}, *KD]}, "remove the label losses ['ce']"),
    ({"losses": []}, "give one"),
    ({"view": {"name": "consistent"}}, "remove 'view'"),
    ({"teacher": None}, "one model teacher"),
    ({"scheme": {"name": "transfer_set", "sets": ["original", "noise"]}}, "unknown sets"),
    ({"scheme": {"name": "transfer_set", "sets": ["synthesized"]}}, "deepinversion wrote"),
    ({"scheme": {"name": "transfer_set", "sets": ["synthesized"],
                 "synthesized": ["nowhere.safetensors"]}}, "does not exist"),
    ({"scheme": {"name": "transfer_set", "sets": ["unlabelled"]}}, "a data section"),
])
def test_refusals_name_the_problem_before_anything_is_written(tmp_path, teacher_run,
                                                              change, message):
    data = synthetic_config(tmp_path, name="ts", teacher={"run": str(teacher_run)},
                            losses=KD, scheme={"name": "transfer_set"})
    data.update(change)
    if data["teacher"] is None:
        data.pop("teacher")
    cfg = parse_config(data)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        api.train(cfg, verbose=False)
    assert not (tmp_path / "runs" / "ts").exists()


def test_the_sets_are_registered_with_their_papers():
    assert set(TRANSFER_SETS.names()) >= {"original", "mixup", "cutmix", "synthesized",
                                          "unlabelled"}
    assert all(TRANSFER_SETS.entry(n).source for n in TRANSFER_SETS.names())
