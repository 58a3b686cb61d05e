import pytest
import torch

from kdforge import CE, KD, Batch, ConfigError, Distiller, ModuleTeacher, ShapeMismatchError
from kdforge.losses.base import LossTerm
from tests.conftest import TinyNet


def make(num_student=4, num_teacher=4, terms=None):
    torch.manual_seed(0)
    student, teacher = TinyNet(num_student), TinyNet(num_teacher, width=8)
    return Distiller(student, teacher, terms or [CE(weight=0.1), KD(T=4, weight=0.9)])


def test_parts_are_weighted_and_sum_to_loss():
    d = make()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    out = d(x, y)
    assert set(out.parts) == {"ce", "kd"}
    assert torch.allclose(out.loss, out.parts["ce"] + out.parts["kd"])
    ce = CE()(out.student_outputs, None, Batch(x, y))
    assert torch.allclose(out.parts["ce"], 0.1 * ce)
    assert out.teacher_outputs is not None and out.student_outputs.logits.shape == (6, 4)


def test_teacher_frozen_and_eval_whatever_train_is_called():
    d = make()
    d.train()
    assert d.student.training and not d.teacher.training
    assert not d.teacher.model.training
    params = list(d.trainable_parameters())
    assert len(params) == len(list(d.student.parameters()))
    assert not any(p is q for p in params for q in d.teacher.parameters())
    out = d(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,)))
    out.loss.backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())


def test_class_count_mismatch_fails_at_prepare_naming_shapes():
    d = make(num_student=4, num_teacher=7)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 4\).*\(4, 7\)"):
        d(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,)))


def test_needs_teacher_error():
    with pytest.raises(ConfigError, match=r"\['kd'\] need a teacher"):
        Distiller(TinyNet(), None, [CE(), KD()])
    with pytest.raises(ConfigError, match="at least one"):
        Distiller(TinyNet(), None, [])


def test_plain_module_teacher_is_wrapped():
    d = Distiller(TinyNet(), TinyNet(), [KD()])
    assert isinstance(d.teacher, ModuleTeacher)


def test_feature_terms_get_their_layers_and_duplicate_names_are_kept_apart():
    class FeatureMSE(LossTerm):
        name = "fmse"

        def student_features(self):
            return ["conv"]

        def teacher_features(self):
            return ["conv"]

        def forward(self, student, teacher, batch):
            return (student.features["conv"] - teacher.features["conv"]).pow(2).mean()

    torch.manual_seed(0)
    d = Distiller(TinyNet(), TinyNet(), [FeatureMSE(), FeatureMSE(weight=2.0)])
    out = d(torch.randn(2, 1, 8, 8))
    assert set(out.parts) == {"fmse", "fmse_1"}
    assert torch.allclose(out.parts["fmse_1"], 2 * out.parts["fmse"])
    assert out.parts["fmse"] > 0


def test_student_identical_to_teacher_gets_zero_kd():
    torch.manual_seed(0)
    net = TinyNet()
    twin = TinyNet()
    twin.load_state_dict(net.state_dict())
    d = Distiller(twin, net, [KD()])
    d.eval()  # same BN mode on both sides
    assert d(torch.randn(5, 1, 8, 8)).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_prepare_does_not_touch_batchnorm_statistics():
    d = make()
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    d.prepare(Batch(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))))
    for k, v in d.student.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_weight_schedule_warms_up_with_progress():
    from kdforge.losses.base import WeightSchedule

    sched = WeightSchedule(start_epoch=2, warmup_epochs=4)
    assert [sched.factor(e) for e in (0, 1.9, 2, 4, 6, 10)] == [0, 0, 0, 0.5, 1, 1]
    d = make(terms=[CE(), KD(weight=2.0).scheduled(warmup_epochs=20)])
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))
    d.eval()
    d.progress = 5.0
    quarter = d(x, y).parts["kd"]
    d.progress = 40.0
    full = d(x, y).parts["kd"]
    assert torch.allclose(quarter * 4, full)
    d.progress = 0.0
    zero = d(x, y)
    assert zero.parts["kd"].item() == 0.0 and zero.parts["kd"].requires_grad
    with pytest.raises(ConfigError, match=">= 0"):
        WeightSchedule(warmup_epochs=-1)
    init_stage = WeightSchedule(stop_epoch=5)
    assert [init_stage.factor(e) for e in (0, 4.9, 5, 9)] == [1, 1, 0, 0]
    with pytest.raises(ConfigError, match="must come after"):
        WeightSchedule(start_epoch=3, stop_epoch=2)


def test_build_loss_takes_schedule_options():
    from kdforge import build_loss

    term = build_loss("kd", weight=0.5, T=2, warmup_epochs=20)
    assert term.weight_at(10) == pytest.approx(0.25)


def test_lazy_adapters_warn_when_prepare_was_skipped():
    from kdforge.losses.feature import FitNet

    d = Distiller(TinyNet(), TinyNet(width=6), [FitNet(student_layer="conv", teacher_layer="conv")])
    with pytest.warns(UserWarning, match="prepare"):
        d(torch.randn(4, 1, 8, 8))
    d2 = Distiller(TinyNet(), TinyNet(width=6), [CE(), KD()])
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        d2(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,)))  # nothing learnable: no warning
