"""Schemes that are sequences of runs: teacher assistants (takd), born-again networks (ban),
and the stage runner that makes them resumable."""

import pytest
import torch
from safetensors.torch import load_file

from kdforge import api, stages
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.teachers.module import ModuleTeacher
from tests.conftest import synthetic_config
from tests.schemes.spies import StageSpy

KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "T": 2}]


@pytest.fixture
def teacher_run(tmp_path):
    cfg = synthetic_config(tmp_path, name="teacher", student={"name": "mlp", "hidden": [32]},
                           train={"epochs": 2})
    return api.train(parse_config(cfg), verbose=False).run_dir


def takd_config(tmp_path, teacher, assistants=({"name": "mlp", "hidden": [16]},), **kw):
    return parse_config(synthetic_config(
        tmp_path, name="chain", teacher={"run": str(teacher)}, losses=KD,
        student={"name": "mlp", "hidden": [4]},
        scheme={"name": "takd", "assistants": list(assistants)}, **kw))


def ban_config(tmp_path, generations=3, **kw):
    return parse_config(synthetic_config(
        tmp_path, name="ban", losses=[{"name": "kd", "T": 1}],
        scheme={"name": "ban", "generations": generations}, **kw))


def test_takd_chains_teacher_assistant_student_and_keeps_every_stage(tmp_path, teacher_run):
    cfg = takd_config(tmp_path, teacher_run, assistants=[{"name": "mlp", "hidden": [16]},
                                                         {"name": "mlp", "hidden": [8]}])
    result = api.train(cfg, verbose=False)
    root = result.run_dir
    assert root == tmp_path / "runs" / "chain"
    for stage, teacher in (("assistant-1", teacher_run), ("assistant-2", root / "assistant-1"),
                           ("student", root / "assistant-2")):
        stage_cfg = api.load_config(root / stage / "config.yaml")
        assert stage_cfg.teacher.run == str(teacher)
        assert (root / stage / "model.safetensors").is_file()
    records = result.summary["records"]
    assert [r["variant"] for r in records] == [None, "assistant-1", "assistant-2"]
    assert records[0]["student_options"] == {"hidden": [4]}
    assert 0 <= records[0]["agreement"] <= 100
    assert stages.load_scheme_result(root)["records"] == records


def test_takd_refuses_a_chain_without_assistant_or_teacher_run(tmp_path, teacher_run):
    with pytest.raises(ConfigError, match="no assistant"):
        api.train(takd_config(tmp_path, teacher_run, assistants=[]), verbose=False)
    cfg = synthetic_config(tmp_path, name="x", losses=KD,
                           scheme={"name": "takd", "assistants": [{"name": "mlp"}]})
    with pytest.raises(ConfigError, match="one trained teacher"):
        api.train(parse_config(cfg), verbose=False)


def test_an_interrupted_chain_resumes_without_retraining_finished_stages(
        tmp_path, teacher_run, monkeypatch):
    full = api.train(takd_config(tmp_path, teacher_run, train={"epochs": 2}).model_copy(
        update={"name": "full"}), verbose=False)
    spy = StageSpy(monkeypatch, interrupt="student")
    cfg = takd_config(tmp_path, teacher_run, train={"epochs": 2})
    with pytest.raises(StageSpy.Stop):
        stages.run_sequence(cfg, verbose=False)
    assert spy.calls == [("assistant-1", False), ("student", False)]
    result = stages.run_sequence(cfg, verbose=False)  # the same command again
    assert spy.calls[2:] == [("student", True)]  # assistant-1 read back, student resumed
    for stage in ("assistant-1", "student"):
        a = load_file(full.run_dir / stage / "model.safetensors")
        b = load_file(result.run_dir / stage / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    assert [r["test_accuracy"] for r in result.summary["records"]] == [
        r["test_accuracy"] for r in full.summary["records"]]
    stages.run_sequence(cfg, verbose=False)
    assert len(spy.calls) == 3  # a finished sequence trains nothing


def test_a_changed_scheme_config_is_not_mixed_with_old_stages(tmp_path, teacher_run):
    api.train(takd_config(tmp_path, teacher_run), verbose=False)
    changed = takd_config(tmp_path, teacher_run, train={"epochs": 3})
    with pytest.raises(ConfigError, match="another config"):
        api.train(changed, verbose=False)
    result = api.train(changed, verbose=False, overwrite=True)
    assert api.load_config(result.run_dir / "student" / "config.yaml").train.epochs == 3


def test_ban_generations_are_taught_by_the_frozen_previous_generation(tmp_path):
    result = api.train(ban_config(tmp_path), verbose=False)
    root = result.run_dir
    gen1 = api.load_config(root / "gen-1" / "config.yaml")
    assert gen1.teacher is None and [loss.name for loss in gen1.losses] == ["ce"]
    for g in (2, 3):
        cfg = api.load_config(root / f"gen-{g}" / "config.yaml")
        assert cfg.teacher.run == str(root / f"gen-{g - 1}")
        assert cfg.student == gen1.student  # the same architecture
        teacher = api.build_teacher(cfg, 4, (1, 8, 8))
        assert isinstance(teacher, ModuleTeacher) and not teacher.training
        assert not any(p.requires_grad for p in teacher.parameters())
        previous = load_file(root / f"gen-{g - 1}" / "model.safetensors")
        for key, value in teacher.model.state_dict().items():
            assert torch.equal(value, previous[key]), key  # the final weights, unchanged
    records = result.summary["records"]
    assert [r["variant"] for r in records] == ["gen-1", "gen-2", "gen-3", "ensemble"]
    assert records[0]["agreement"] is None and records[1]["agreement"] is not None


def test_ban_refuses_bad_configs(tmp_path, teacher_run):
    with pytest.raises(ConfigError, match="generations"):
        api.train(ban_config(tmp_path, generations=1), verbose=False)
    with pytest.raises(ConfigError, match="distillation term"):
        api.train(parse_config(synthetic_config(tmp_path, scheme={"name": "ban"})),
                  verbose=False)
    cfg = synthetic_config(tmp_path, teacher={"run": str(teacher_run)}, losses=KD,
                           scheme={"name": "ban"})
    with pytest.raises(ConfigError, match="remove the 'teacher'"):
        api.train(parse_config(cfg), verbose=False)


def test_a_sequence_scheme_is_not_built_as_one_run(tmp_path):
    with pytest.raises(ConfigError, match="sequence of runs"):
        api.Run(ban_config(tmp_path), verbose=False)


def test_list_schemes_names_each_paper(capsys):
    from kdforge.cli import main

    assert main(["list", "schemes"]) == 0
    out = capsys.readouterr().out
    for name, paper in (("ban", "Furlanello"), ("dml", "Zhang"), ("takd", "Mirzadeh")):
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert paper in line


def test_a_refused_sequence_leaves_no_directory(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, name="bad", scheme={"name": "ban"}))
    with pytest.raises(ConfigError, match="distillation term"):
        api.train(cfg, verbose=False)
    assert not (tmp_path / "runs" / "bad").exists()


def test_resume_of_a_sequence_directory_continues_it(tmp_path, monkeypatch):
    spy = StageSpy(monkeypatch, interrupt="gen-2")
    cfg = ban_config(tmp_path, generations=2, train={"epochs": 2})
    with pytest.raises(StageSpy.Stop):
        stages.run_sequence(cfg, verbose=False)
    result = api.resume(tmp_path / "runs" / "ban", verbose=False)  # kdforge train --resume
    assert spy.calls[2:] == [("ban", True), ("gen-2", True)]  # gen-1 read back
    assert [r["variant"] for r in result.summary["records"]] == ["gen-1", "gen-2", "ensemble"]


def test_training_inputs_forbidden_refuses_every_read_but_the_size():
    from kdforge.core.errors import DataError
    from kdforge.data.datasets import load_dataset
    from kdforge.schemes.base import TrainingInputsForbidden

    train = load_dataset("synthetic", num_classes=3, num_train=12, num_test=3).train
    forbidden = TrainingInputsForbidden(train, "dfad")
    assert len(forbidden) == 12 and forbidden.num_classes == 3
    for read in (lambda: forbidden[0], lambda: forbidden.__getitems__([0, 1]),
                 lambda: forbidden.subset([0]), lambda: forbidden.targets):
        with pytest.raises(DataError, match="data-free"):
            read()
