"""The data-free schemes ``dfad`` and ``dafl``: a generator instead of the training set."""

import math

import pytest
import torch
from torch import nn

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError, DataError
from kdforge.core.outputs import Batch
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.generators import build_generator
from kdforge.models.runs import load_run_model
from kdforge.schemes.base import TrainingInputsForbidden
from kdforge.schemes.data_free import (
    DFADStep,
    activation_loss,
    information_entropy_loss,
    l1_discrepancy,
    one_hot_loss,
    penultimate_layer,
)
from kdforge.teachers.module import ModuleTeacher
from tests.conftest import synthetic_config, train_until

SCHEMES = {"dfad": ({"name": "dfad", "z_dim": 8, "width": 8, "steps_per_epoch": 3}, []),
           "dafl": ({"name": "dafl", "z_dim": 8, "width": 8, "steps_per_epoch": 3},
                    [{"name": "kd", "T": 1}])}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A small teacher with BatchNorm (resnet8) on the synthetic 1x8x8 data."""
    root = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = synthetic_config(root, name="teacher", student={"name": "resnet8"},
                               train={"epochs": 2})
        return str(api.train(parse_config(cfg), verbose=False).run_dir)
    finally:
        torch.set_num_threads(threads)


def config(tmp_path, teacher, scheme="dfad", name=None, epochs=2, **sections):
    options, losses = SCHEMES[scheme]
    sections.setdefault("losses", losses)
    if teacher is not None:
        sections.setdefault("teacher", {"run": teacher})
    return parse_config(synthetic_config(tmp_path, name=name or scheme, scheme=options,
                                         train={"epochs": epochs}, **sections))


# -- (1) the losses from their formulas -----------------------------------------------------------

def test_l1_discrepancy_is_the_mean_absolute_logit_difference():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = (1 + 2 + 0.5 + 1 + 2 + 2) / 6
    assert l1_discrepancy(s, t).item() == pytest.approx(expected)


def test_one_hot_loss_is_the_cross_entropy_against_the_own_argmax():
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # row 0: argmax 0, -log(e^2 / (e^2 + 1)); row 1: argmax 1, -log(e / (1 + e))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert one_hot_loss(t).item() == pytest.approx(expected, rel=1e-6)


def test_activation_loss_is_minus_the_mean_absolute_feature():
    f = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert activation_loss(f).item() == pytest.approx(-(1 + 3 + 0 + 2) / 4)


def test_information_entropy_loss_is_minus_the_entropy_of_the_mean_prediction():
    balanced = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])  # mean softmax ~ (0.5, 0.5)
    assert information_entropy_loss(balanced).item() == pytest.approx(-math.log(2), abs=1e-6)
    collapsed = torch.tensor([[10.0, -10.0], [10.0, -10.0]])  # mean ~ (1, 0): entropy ~ 0
    assert information_entropy_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]])
    p = torch.softmax(logits, 1).mean(0)
    assert information_entropy_loss(logits).item() == pytest.approx(
        sum(q * math.log(q) for q in p.tolist()), rel=1e-6)


def test_generator_makes_the_shapes_of_images_and_signals():
    for shape in [(1, 8, 8), (3, 32, 32), (1, 40), (2, 10), (1, 7, 7)]:
        g = build_generator(shape, z_dim=5, width=8)
        assert tuple(g(torch.randn(4, 5)).shape) == (4, *shape)
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.modules())


def test_penultimate_layer_is_the_input_of_the_last_linear():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert penultimate_layer(model) == "2@input"


# -- (2) the phases update only their own group ---------------------------------------------------

def test_each_phase_updates_only_its_own_module():
    from kdforge.config import OptimConfig, ScheduleConfig
    from kdforge.engine.updater import Updater

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                            nn.Linear(16, 4))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    step = DFADStep(student, build_generator((1, 8, 8), z_dim=6, width=8),
                    ModuleTeacher(teacher, gradients="input"),
                    {"name": "adam", "lr": 1e-2, "weight_decay": 0.0})
    updater = Updater(step.optimizer_groups(), optim=OptimConfig(name="sgd", lr=0.1),
                      schedule=ScheduleConfig(name="constant"), steps_per_epoch=1, epochs=1,
                      device_type="cpu")
    step.train()
    batch = Batch(torch.randn(16, 6))

    def snap(module):
        return [p.detach().clone() for p in module.parameters()]

    s0, g0 = snap(student), snap(step.generator)
    updater.update("generator", step.step(batch, "generator").loss)
    assert all(torch.equal(a, b) for a, b in zip(s0, snap(student), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g0, snap(step.generator), strict=True))
    assert all(p.grad is None for p in student.parameters())  # cleared for the next phase
    g1 = snap(step.generator)
    updater.update("student", step.step(batch, "student").loss)
    assert all(torch.equal(a, b) for a, b in zip(g1, snap(step.generator), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(s0, snap(student), strict=True))


# -- (3) end to end, data-free, frozen teacher ----------------------------------------------------

@pytest.mark.parametrize("scheme", ["dfad", "dafl"])
def test_end_to_end_reads_no_training_input_and_keeps_the_teacher(tmp_path, teacher_run,
                                                                   scheme):
    before = load_run_model(teacher_run).state_dict()
    cfg = config(tmp_path, teacher_run, scheme)
    result = api.train(cfg, verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] is None and record["student"] == "mlp"
    assert record["training_inputs_read"] == 0
    assert 0.0 <= record["test_accuracy"] <= 100.0 and 0.0 <= record["agreement"] <= 100.0
    assert record["train_seconds"] > 0
    counts = result.summary["scheme"]["generated_classes"]
    assert len(counts) == 4 and sum(counts) == 512
    run = result.run_dir
    for name in ["model.safetensors", "model-generator.safetensors", "generated.png",
                 "generated_classes.png"]:
        assert (run / name).is_file(), name
    # the saved teacher is untouched (weights and BatchNorm statistics)
    assert any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], v) for k, v in load_run_model(teacher_run)
               .state_dict().items())


def test_the_teacher_inside_the_trained_step_is_unchanged(tmp_path, teacher_run):
    run = api.Run(config(tmp_path, teacher_run, "dafl", epochs=1), verbose=False)
    teacher = run.distiller.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    g_before = [p.detach().clone() for p in run.distiller.generator.parameters()]
    for _ in run.epochs():
        pass
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    # the check can fail: in train mode one pass on generated inputs moves the BN statistics
    with torch.no_grad():
        teacher.train()
        teacher(run.distiller.generator(torch.randn(16, 8)))
    assert not all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(a, b.detach()) for a, b in
                   zip(g_before, run.distiller.generator.parameters(), strict=True))


def test_the_forbidden_training_set_raises_on_any_read(tmp_path, teacher_run):
    run = api.Run(config(tmp_path, teacher_run, "dfad", epochs=1), verbose=False)
    assert isinstance(run.data.train, TrainingInputsForbidden) and run.data.val is None
    with pytest.raises(DataError, match="data-free"):
        run.data.train[0]


# -- (4) resume ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["dfad", "dafl"])
def test_resume_gives_the_same_student_and_generator(tmp_path, teacher_run, scheme):
    cfg = config(tmp_path, teacher_run, scheme, epochs=3)
    full = api.train(cfg, verbose=False)
    cut = train_until(cfg, 1, name="cut")
    resumed = api.resume(cut, verbose=False)
    a = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]
    b = load_checkpoint(resumed.run_dir / "checkpoint.safetensors")["modules"]
    assert {"student", "generator"} <= set(a)
    for module in ("student", "generator"):
        assert a[module].keys() == b[module].keys()
        for k in a[module]:
            assert torch.equal(a[module][k], b[module][k]), (module, k)
    assert (resumed.run_dir / "model-generator.safetensors").is_file()
    assert resumed.summary["test"] == full.summary["test"]


# -- (5) bad configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,change,message", [
    ("dfad", {"teacher": None}, "add a 'teacher' section"),
    ("dafl", {"teacher": None}, "add a 'teacher' section"),
    ("dafl", {"losses": [{"name": "ce"}, {"name": "kd", "T": 1}]}, "no labels exist"),
    ("dfad", {"losses": [{"name": "ce"}]}, "no labels exist"),
    ("dfad", {"losses": [{"name": "kd"}]}, "losses: []"),
    ("dafl", {"losses": []}, "distils the student with the run's losses"),
    ("dafl", {"scheme": {"name": "dafl", "teacher_layer": "nope"}}, "nope"),
    ("dfad", {"scheme": {"name": "dfad", "steps_per_epoch": 0}}, "steps_per_epoch"),
])
def test_bad_configs_are_refused_before_training(tmp_path, teacher_run, scheme, change, message):
    data = synthetic_config(tmp_path, name="bad", scheme=SCHEMES[scheme][0],
                            losses=SCHEMES[scheme][1], teacher={"run": teacher_run})
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        api.Run(parse_config(data), verbose=False)
    assert not (tmp_path / "runs" / "bad" / "checkpoint.safetensors").exists()


def test_a_store_teacher_is_refused(tmp_path, teacher_run):
    data = synthetic_config(tmp_path, name="bad", scheme=SCHEMES["dafl"][0],
                            losses=SCHEMES["dafl"][1], teacher={"store": str(tmp_path / "s")})
    with pytest.raises(ConfigError, match="needs one model teacher.*soft-label store"):
        api.Run(parse_config(data), verbose=False)


def test_dfad_takes_k_student_steps_per_generator_step(tmp_path, teacher_run):
    """Fang et al.'s k: the generator's phase runs on every k-th batch (k = 5 by default)."""
    run = api.Run(config(tmp_path, teacher_run, "dfad", epochs=1), verbose=False)
    groups = {g.name: g.every for g in run.distiller.optimizer_groups()}
    assert groups == {"generator": 5, "student": 1}
    cfg = config(tmp_path, teacher_run, "dfad", name="k2", epochs=1)
    data = cfg.to_dict()
    data["scheme"]["student_steps"] = 2
    cfg = parse_config(data)
    trainer = api.Run(cfg, verbose=False).trainer
    trainer.fit()
    adam = trainer.updater.optimizer("generator")
    assert int(next(iter(adam.state.values()))["step"]) == 2  # batches 0 and 2 of 3
