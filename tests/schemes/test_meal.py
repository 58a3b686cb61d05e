"""The ``meal`` scheme (MEAL V2): KL to the teacher ensemble plus a discriminator on
probabilities, no hard labels."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kdforge import api
from kdforge.config import OptimConfig, ScheduleConfig, parse_config
from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch
from kdforge.distill.distiller import Distiller
from kdforge.engine.updater import Updater
from kdforge.losses.response import KD
from kdforge.schemes.meal import (
    Discriminator,
    MealStep,
    adversarial_loss,
    discriminator_loss,
)
from kdforge.teachers.ensemble import EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from tests.conftest import TinyNet, synthetic_config, train_until

KL_LOSS = [{"name": "kd", "T": 1}]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two small teachers of different architectures and seeds."""
    root = tmp_path_factory.mktemp("teachers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = []
    try:
        for key, seed, model in [("wide", 0, {"name": "mlp", "hidden": [32]}),
                                 ("deep", 1, {"name": "mlp", "hidden": [16, 16]})]:
            cfg = synthetic_config(root, name=key, seed=seed, student=model, train={"epochs": 3})
            runs.append(str(api.train(parse_config(cfg), verbose=False).run_dir))
    finally:
        torch.set_num_threads(threads)
    return runs


def meal_config(tmp_path, teachers, name="meal", scheme=None, **sections):
    sections.setdefault("losses", KL_LOSS)
    return synthetic_config(tmp_path, name=name, teacher=[{"run": t} for t in teachers],
                            scheme={"name": "meal", "hidden": 16, **(scheme or {})}, **sections)


# -- (1) the losses from their formulas ---------------------------------------------------------
def test_discriminator_and_adversarial_losses_follow_the_formulas():
    d_t = torch.tensor([2.0, -1.0, 0.5])
    d_s = torch.tensor([0.0, 1.5, -3.0])
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    expect_d = -0.5 * (sum(math.log(sig(v)) for v in d_t.tolist()) / 3
                       + sum(math.log(1.0 - sig(v)) for v in d_s.tolist()) / 3)
    expect_adv = -sum(math.log(sig(v)) for v in d_s.tolist()) / 3
    assert discriminator_loss(d_t, d_s).item() == pytest.approx(expect_d, rel=1e-6)
    assert adversarial_loss(d_s).item() == pytest.approx(expect_adv, rel=1e-6)


class Fixed(torch.nn.Module):
    """A 'network' that returns given logits whatever its input (plus a dummy weight)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + 0.0 * self.w


def test_student_loss_is_kl_to_the_mean_of_teacher_probabilities_plus_the_adversarial_term():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.0]])
    t1 = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    t2 = torch.tensor([[0.0, 3.0, 0.0], [1.0, -1.0, 0.0]])
    ensemble = EnsembleTeacher([Fixed(t1), Fixed(t2)], combine="mean_probs")
    disc = Discriminator(3, hidden=4)
    step = MealStep(Distiller(Fixed(s), ensemble, [KD(T=1.0)]), disc, adversarial_weight=0.7)
    batch = Batch(torch.zeros(2, 5), torch.tensor([0, 1]))
    step.prepare(batch)
    result = step.step(batch, "student")
    # independently: p_e = mean of softmaxes; KL(p_e || p_s) per sample, batch mean
    p_e = [[(a + b) / 2 for a, b in zip(r1, r2, strict=True)]
           for r1, r2 in zip(F.softmax(t1, -1).tolist(), F.softmax(t2, -1).tolist(), strict=True)]
    p_s = F.softmax(s, -1).tolist()
    kl = sum(q * math.log(q / p) for rq, rp in zip(p_e, p_s, strict=True)
             for q, p in zip(rq, rp, strict=True)) / 2
    with torch.no_grad():
        logits = disc(torch.tensor(p_s)).tolist()
    adv = -sum(math.log(1.0 / (1.0 + math.exp(-v))) for v in logits) / 2
    assert result.parts["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert result.parts["adversarial"].item() == pytest.approx(0.7 * adv, rel=1e-5)
    assert result.loss.item() == pytest.approx(kl + 0.7 * adv, rel=1e-5)
    # the discriminator phase sees the ensemble's probabilities as 'real'
    d_result = step.step(batch, "discriminator")
    with torch.no_grad():
        real = disc(torch.tensor(p_e)).tolist()
    expect = -0.5 * (sum(math.log(1 / (1 + math.exp(-v))) for v in real) / 2
                     + sum(math.log(1 - 1 / (1 + math.exp(-v))) for v in logits) / 2)
    assert d_result.loss.item() == pytest.approx(expect, rel=1e-5)


# -- (2) the two optimizers, the frozen teacher ------------------------------------------------
def tiny_step(weight=1.0):
    torch.manual_seed(0)
    teacher = TinyNet(4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, to see that they stay
        teacher.bn.running_mean.uniform_(-1, 1)
        teacher.bn.running_var.uniform_(0.5, 2)
    step = MealStep(Distiller(TinyNet(4), ModuleTeacher(teacher), [KD(T=1.0)]),
                    Discriminator(4, hidden=8), adversarial_weight=weight,
                    discriminator_optim=OptimConfig(name="adam", lr=1e-2, weight_decay=0.0))
    return step, teacher


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_each_phase_updates_only_its_own_group_and_the_teacher_stays_frozen():
    step, teacher = tiny_step()
    gen = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen))
    step.prepare(batch)
    step.train()
    assert [g.name for g in step.optimizer_groups()] == ["discriminator", "student"]
    updater = Updater(step.optimizer_groups(), optim=OptimConfig(name="sgd", lr=0.1),
                      schedule=ScheduleConfig(name="constant"), steps_per_epoch=4, epochs=1,
                      device_type="cpu")
    teacher_before = snapshot(teacher)
    for _ in range(3):
        student_before, disc_before = snapshot(step.student), snapshot(step.discriminator)
        updater.update("discriminator", step.step(batch, "discriminator").loss)
        assert changed(disc_before, step.discriminator)  # the discriminator moved ...
        assert not changed(student_before, step.student)  # ... and nothing of the student,
        # not even its BatchNorm statistics (they move once per step, in the student phase)
        disc_before = snapshot(step.discriminator)
        updater.update("student", step.step(batch, "student").loss)
        assert not changed(disc_before, step.discriminator)
        assert {"conv.weight", "fc.weight", "bn.running_mean"} <= changed(student_before,
                                                                          step.student)
    assert not changed(teacher_before, teacher)  # weights and BN statistics
    assert not teacher.training
    assert step.trained_modules().keys() == {"student", "discriminator"}
    assert list(step.trained_modules())[0] == "student"


# -- (3) end to end -----------------------------------------------------------------------------
def test_meal_end_to_end_with_two_teachers(tmp_path, teachers):
    cfg = parse_config(meal_config(tmp_path, teachers, scheme={"adversarial_weight": 0.5},
                                   train={"epochs": 8}))
    result = api.train(cfg, verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] is None and record["student"] == "mlp"
    assert record["teachers"] == 2 and record["adversarial_weight"] == 0.5
    assert record["test_accuracy"] == pytest.approx(100 * result.summary["test"]["accuracy"])
    assert record["agreement"] == pytest.approx(100 * result.summary["test"]["agreement"])
    assert record["train_seconds"] > 0 and record["run_dir"] == str(result.run_dir)
    assert record["agreement"] > 40  # it learnt from the teachers (chance is 25)
    assert (result.run_dir / "model-discriminator.safetensors").exists()
    # the teacher agreement is measured against the teachers' mean-probability ensemble
    teacher = api.build_teaching(cfg, api.build_data(cfg)).eval_teacher
    assert isinstance(teacher, EnsembleTeacher) and teacher.combine == "mean_probs"


# -- (4) resume ---------------------------------------------------------------------------------
def test_resume_after_an_interruption_gives_the_same_student_and_discriminator(tmp_path,
                                                                               teachers):
    cfg = parse_config(meal_config(tmp_path, teachers, train={"epochs": 3}))
    full = api.train(cfg, verbose=False).run_dir
    cut = train_until(cfg, epoch=1)
    assert not (cut / "summary.json").exists()
    resumed = api.resume(cut, verbose=False).run_dir
    for name in ("model.safetensors", "model-discriminator.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# -- (5) bad configs ----------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"teacher": None}, "add a 'teacher' section"),
    ({"teacher": {"store": "somewhere"}}, "soft-label store"),
    ({"losses": None}, "without hard labels"),
    ({"losses": [{"name": "ce"}, {"name": "kd", "T": 1}]}, "remove the 'ce' loss"),
    ({"ensemble": "mean_logits"}, "ensemble: mean_probs"),
    ({"scheme": {"name": "meal", "adversarial_weight": -1}}, "adversarial_weight"),
    ({"scheme": {"name": "meal", "discriminator_optim": {"lr": 0}}}, "lr"),
])
def test_bad_configs_are_refused_before_training(tmp_path, teachers, change, message):
    raw = meal_config(tmp_path, teachers)
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=message):
        api.train(parse_config(raw), verbose=False)
    assert not (tmp_path / "runs" / "meal").exists()
