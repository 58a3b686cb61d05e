"""Meta Pseudo Labels (``mpl``): the teacher's first-order coefficient and gradient, the
labelled / unlabelled split, separate optimizers, resume, end to end, refused configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdforge import api
from kdforge.config import OptimConfig, TrainConfig, parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.trainer import Trainer
from kdforge.schemes.meta_pseudo_labels import (
    TEACHER_WEIGHTS,
    MetaPseudoLabelsStep,
    SemiBatch,
    SemiSupervisedSource,
    split_labelled,
)
from tests.conftest import synthetic_config

MPL = {"name": "mpl", "labelled_fraction": 0.25}


def _ce_and_grad(x, w, b, y):
    """Softmax cross-entropy of a linear model by hand, and its gradient in (w, b)."""
    z = x @ w.T + b
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    onehot = torch.eye(w.shape[0], dtype=x.dtype)[y]
    ce = -(onehot * torch.log(p)).sum(1).mean()
    d = (p - onehot) / x.shape[0]
    return ce, d.T @ x, d.sum(0)


def _linear_case(eta=0.01):
    torch.manual_seed(3)
    student, teacher = nn.Linear(5, 3).double(), nn.Linear(5, 3).double()
    x_l, y_l = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    x_u = torch.randn(8, 5, dtype=torch.float64)
    return student, teacher, SemiBatch(x_l, y_l, unlabelled=x_u), eta


def test_coefficient_and_teacher_gradient_follow_the_first_order_rule():
    student, teacher, batch, eta = _linear_case()
    w0, b0 = student.weight.detach().clone(), student.bias.detach().clone()
    tw, tb = teacher.weight.detach().clone(), teacher.bias.detach().clone()
    step = MetaPseudoLabelsStep(student, teacher, pseudo_labels="argmax")

    out = step.step(batch, "student")
    out.loss.backward()
    assert teacher.weight.grad is None  # the student's phase sends nothing to the teacher
    with torch.no_grad():
        for p in student.parameters():
            p -= eta * p.grad
    result = step.step(batch, "teacher")

    # by hand: pseudo labels, the student's SGD step on them, its labelled loss before/after
    pseudo = (batch.unlabelled @ tw.T + tb).argmax(1)
    _, gw_u, gb_u = _ce_and_grad(batch.unlabelled, w0, b0, pseudo)
    w1, b1 = w0 - eta * gw_u, b0 - eta * gb_u
    before, _, _ = _ce_and_grad(batch.inputs, w0, b0, batch.targets)
    after, gw_l1, gb_l1 = _ce_and_grad(batch.inputs, w1, b1, batch.targets)
    h = result.parts["h"]
    assert torch.allclose(h, before - after, atol=1e-12)
    # the paper's first-order form: eta * grad L_l(theta')^T grad L_u(theta)
    dot = eta * ((gw_l1 * gw_u).sum() + (gb_l1 * gb_u).sum())
    assert float(h) == pytest.approx(float(dot), rel=0.02)
    assert abs(float(h)) > 1e-6

    # teacher gradient: h * grad CE(pseudo, T(x_u)) + grad CE(y_l, T(x_l))
    student.zero_grad()
    result.loss.backward()
    _, gw_tu, gb_tu = _ce_and_grad(batch.unlabelled, tw, tb, pseudo)
    _, gw_tl, gb_tl = _ce_and_grad(batch.inputs, tw, tb, batch.targets)
    assert torch.allclose(teacher.weight.grad, h * gw_tu + gw_tl, atol=1e-10)
    assert torch.allclose(teacher.bias.grad, h * gb_tu + gb_tl, atol=1e-10)
    assert student.weight.grad is None  # the teacher's phase sends nothing to the student


def test_split_is_stratified_seeded_and_disjoint():
    targets = torch.tensor([0] * 20 + [1] * 10 + [2] * 30)
    lab, unlab = split_labelled(targets, 0.1, 3, seed=0)
    assert torch.bincount(targets[lab], minlength=3).tolist() == [2, 1, 3]
    assert set(lab.tolist()).isdisjoint(unlab.tolist())
    assert len(lab) + len(unlab) == 60
    assert torch.equal(lab, split_labelled(targets, 0.1, 3, seed=0)[0])
    assert not torch.equal(lab, split_labelled(targets, 0.1, 3, seed=1)[0])


class SnapshotStep(MetaPseudoLabelsStep):
    """Records both networks' weights at the start of every phase."""

    snapshots: list

    def step(self, batch, phase=None):
        flat = {k: torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])
                for k, m in self.trained_modules().items()}
        self.snapshots.append((phase, flat))
        return super().step(batch, phase)


def _train_direct(tmp_path, name, unlabelled_targets):
    torch.manual_seed(0)
    x = torch.randn(80, 6)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    data = ArrayDataset(x, y)
    lab, unlab = split_labelled(y, 0.2, 4)
    unlabelled = ArrayDataset(x[unlab], unlabelled_targets(y[unlab]))
    source = SemiSupervisedSource(data.subset(lab), unlabelled, 16, 8)
    student = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    teacher = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    step = SnapshotStep(student, teacher, teacher_optim={"name": "adam", "lr": 0.01})
    step.snapshots = []
    Trainer(step, source, None, num_classes=4, batch_size=16,
            optim=OptimConfig(name="sgd", lr=0.05), train=TrainConfig(epochs=2, device="cpu"),
            run_dir=str(tmp_path / name), verbose=False).fit()
    return step


def test_labels_of_the_unlabelled_part_are_never_read(tmp_path):
    kept = _train_direct(tmp_path, "kept", lambda t: t)
    scrambled = _train_direct(tmp_path, "scrambled", lambda t: (t + 1) % 4)
    for (name, a), b in zip(kept.state_dict().items(), scrambled.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_each_optimizer_updates_only_its_own_network(tmp_path):
    shots = _train_direct(tmp_path, "groups", lambda t: t).snapshots
    phases = [phase for phase, _ in shots]
    assert phases[:4] == ["student", "teacher", "student", "teacher"]
    assert len(phases) == 2 * 2 * (64 // 16)  # 2 epochs of 4 steps, two phases each
    for (phase, a), (_, b) in zip(shots, shots[1:], strict=False):
        other = "teacher" if phase == "student" else "student"
        assert torch.equal(a[other], b[other]), phase  # the other network is untouched
        assert not torch.equal(a[phase], b[phase]), phase  # this phase's network moved


def test_end_to_end_records_and_teacher_weights(tmp_path):
    result = api.train(parse_config(synthetic_config(tmp_path, scheme=MPL)), verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] is None and record["student"] == "mlp"
    assert record["labelled_fraction"] == 0.25
    assert record["labelled_samples"] == 24  # a quarter of the 96 training samples
    for key in ("test_accuracy", "agreement", "teacher_accuracy", "train_seconds"):
        assert isinstance(record[key], float), key
    assert (result.run_dir / TEACHER_WEIGHTS).exists()
    modules = load_checkpoint(result.run_dir / "checkpoint.safetensors")["modules"]
    assert set(modules) == {"student", "teacher"}
    logged = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train/student/pseudo_ce", "train/teacher/mpl", "train/teacher/h"} <= set(logged)

    base = api.train(parse_config(synthetic_config(
        tmp_path, name="base", scheme={**MPL, "supervised_only": True})), verbose=False)
    (record,) = base.summary["records"]
    assert record["variant"] == "supervised" and record["agreement"] is None
    assert set(load_checkpoint(base.run_dir / "checkpoint.safetensors")["modules"]) == {"student"}

    ablation = api.train(parse_config(synthetic_config(
        tmp_path, name="ablation", scheme={**MPL, "mpl_weight": 0.0})), verbose=False)
    assert ablation.summary["records"][0]["variant"] == "no-feedback"


def test_resume_gives_identical_weights(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, scheme=MPL, train={"epochs": 3}))
    full = api.train(cfg, verbose=False)
    full_state = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]

    class Interrupt(Exception):
        pass

    def stop(trainer, record):
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        api.train(cfg.model_copy(update={"name": "cut"}), verbose=False, callbacks=[stop])
    resumed = api.resume(tmp_path / "runs" / "cut", verbose=False)
    state = load_checkpoint(resumed.run_dir / "checkpoint.safetensors")["modules"]
    for module in ("student", "teacher"):
        for key, value in full_state[module].items():
            assert torch.equal(value, state[module][key]), (module, key)
    assert resumed.summary["test"] == full.summary["test"]


@pytest.mark.parametrize(("scheme", "match"), [
    ({"labelled_fraction": 0.0}, "labelled_fraction must be in"),
    ({"labelled_fraction": 1.0}, "labelled_fraction must be in"),
    ({"labelled_fraction": 0.01}, "no labelled sample"),
    ({"pseudo_labels": "soft"}, "pseudo_labels 'soft' is unknown"),
])
def test_bad_configs_are_refused(tmp_path, scheme, match):
    cfg = parse_config(synthetic_config(tmp_path, scheme={"name": "mpl", **scheme}))
    with pytest.raises(ConfigError, match=match):
        api.train(cfg, verbose=False)
    assert not (tmp_path / "runs" / "run" / "checkpoint.safetensors").exists()


def test_a_teacher_section_is_refused(tmp_path):
    teacher = api.train(parse_config(synthetic_config(tmp_path, name="t", train={"epochs": 1})),
                        verbose=False)
    cfg = parse_config(synthetic_config(tmp_path, scheme=MPL,
                                        teacher={"run": str(teacher.run_dir)}))
    with pytest.raises(ConfigError, match="trains its own teacher"):
        api.train(cfg, verbose=False)


def test_the_student_phase_needs_an_unlabelled_batch():
    student, teacher, batch, _ = _linear_case()
    step = MetaPseudoLabelsStep(student, teacher)
    with pytest.raises(ConfigError, match="unlabelled part"):
        step.step(batch.__class__(batch.inputs, batch.targets), "student")
