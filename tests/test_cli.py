"""The command line as a user meets it: listings, a train/distill/evaluate round trip, errors."""

import json

import pytest
import yaml

from kdforge.cli import main
from tests.conftest import synthetic_config


def test_list_prints_registered_things_with_sources(capsys):
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "Hinton" in out
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "resnet32x4" in out and "timm:NAME" in out
    assert main(["list", "datasets"]) == 0
    assert "mnist1d" in capsys.readouterr().out
    assert main(["list", "views"]) == 0
    out = capsys.readouterr().out
    assert "function_matching" in out and "Beyer" in out
    assert main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    assert "adamw" in out and "Loshchilov & Hutter 2019" in out and "shampoo" in out
    assert main(["list", "schedules"]) == 0
    assert {"cosine", "step", "constant"} <= {line.split()[0] for line in
                                             capsys.readouterr().out.splitlines()}
    assert main(["list", "layer-types"]) == 0
    assert "Conv2d" in capsys.readouterr().out
    assert main(["list", "layers", "resnet8", "--set", "input_shape=[1, 8, 8]"]) == 0
    assert "layer3" in capsys.readouterr().out


def test_train_distill_evaluate_round_trip(tmp_path, capsys):
    teacher_cfg = tmp_path / "teacher.yaml"
    teacher_cfg.write_text(yaml.safe_dump(synthetic_config(tmp_path, name="teacher")))
    assert main(["train", str(teacher_cfg), "--quiet"]) == 0
    capsys.readouterr()

    student = synthetic_config(
        tmp_path, name="student", student={"name": "logreg"},
        teacher={"run": str(tmp_path / "runs" / "teacher")},
        losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}],
    )
    student_cfg = tmp_path / "student.yaml"
    student_cfg.write_text(yaml.safe_dump(student))
    assert main(["distill", str(student_cfg), "--quiet", "--set", "train.epochs=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "agreement", "kl"} <= set(result["test"])
    run_dir = tmp_path / "runs" / "student"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 1
    for name in ("metrics.jsonl", "model.safetensors", "checkpoint.safetensors", "summary.json"):
        assert (run_dir / name).is_file(), name

    assert main(["evaluate", str(run_dir)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(result["test"]["accuracy"])


@pytest.mark.parametrize(
    ("args_of", "message"),
    [
        (lambda p: ["train", str(p), "--set", "train.epochz=2"], "train.epochz: unknown key"),
        (lambda p: ["train", str(p), "--set", "student.name=resnet9"], "unknown model 'resnet9'"),
        (lambda p: ["train", str(p), "--set", "student.widht=3"], "has no option 'widht'"),
        (lambda p: ["train", str(p), "--set", "data.name=mnist2d"], "unknown dataset 'mnist2d'"),
        (lambda p: ["train", str(p), "--set", "losses=[{name: kd}]"], "need a teacher"),
        (lambda p: ["distill", str(p)], "distill needs a 'teacher'"),
        (lambda p: ["train", str(p.parent / "missing.yaml")], "does not exist"),
        (lambda p: ["train", "--resume", str(p.parent / "nowhere")], "not a run directory"),
        (lambda p: ["evaluate", str(p.parent)], "not a finished run"),
    ],
)
def test_errors_are_one_clear_line_without_traceback(tmp_path, capsys, args_of, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(synthetic_config(tmp_path)))
    assert main(args_of(cfg)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("kdforge: error:")


def test_teacher_with_other_class_count_fails_before_training(tmp_path, capsys):
    teacher = synthetic_config(tmp_path, name="t10", data={"num_classes": 10})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(teacher))
    assert main(["train", str(path), "--quiet", "--set", "train.epochs=1"]) == 0
    student = synthetic_config(tmp_path, name="s4", teacher={"run": str(tmp_path / "runs" / "t10")},
                               losses=[{"name": "kd"}])
    path.write_text(yaml.safe_dump(student))
    assert main(["distill", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "(8, 4)" in err and "(8, 10)" in err and "num_classes=10" in err
    assert not (tmp_path / "runs" / "s4" / "checkpoint.safetensors").exists()
