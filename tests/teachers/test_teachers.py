import pytest
import torch

from kdforge import ConfigError, EnsembleTeacher, ModuleTeacher, ShapeMismatchError
from kdforge.core.outputs import Outputs
from kdforge.teachers.base import Teacher
from tests.conftest import TinyNet


class FixedLogits(Teacher):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, inputs, batch=None):
        return Outputs(self.logits)


def test_module_teacher_is_frozen_and_stays_in_eval():
    net = TinyNet()
    teacher = ModuleTeacher(net, features=["bn"])
    teacher.train()
    assert not teacher.training and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    out = teacher(x)
    assert not out.logits.requires_grad
    assert out.features["bn"].shape == (4, 4, 8, 8)
    net.train()  # even a bare .train() on the wrapped model is undone at the next call
    teacher(x)
    assert not net.training


def test_module_teacher_bf16_returns_float32():
    out = ModuleTeacher(TinyNet(), precision="bf16")(torch.randn(2, 1, 8, 8))
    assert out.logits.dtype == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        ModuleTeacher(TinyNet(), precision="int4")


def test_ensemble_mean_probs_is_exact_mixture():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    ens = EnsembleTeacher([FixedLogits(a), FixedLogits(b)], combine="mean_probs", weights=[1, 3])
    got = torch.softmax(ens(torch.zeros(3)).logits, -1)
    expected = 0.25 * torch.softmax(a, -1) + 0.75 * torch.softmax(b, -1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_ensemble_mean_logits():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    ens = EnsembleTeacher([FixedLogits(a), FixedLogits(b)], combine="mean_logits")
    assert torch.allclose(ens(torch.zeros(3)).logits, (a + b) / 2)


def test_ensemble_of_modules_routes_features():
    ens = EnsembleTeacher([TinyNet(), TinyNet()])
    ens.require_features(["1:conv"])
    out = ens(torch.randn(2, 1, 8, 8))
    assert set(out.features) == {"1:conv"}
    with pytest.raises(ConfigError, match="'i:layer'"):
        ens.require_features(["conv"])


def test_ensemble_errors():
    with pytest.raises(ConfigError, match="combine"):
        EnsembleTeacher([TinyNet()], combine="vote")
    with pytest.raises(ConfigError, match="weights"):
        EnsembleTeacher([TinyNet(), TinyNet()], weights=[1.0])
    ens = EnsembleTeacher([FixedLogits(torch.zeros(2, 3)), FixedLogits(torch.zeros(2, 4))])
    with pytest.raises(ShapeMismatchError, match="same classes"):
        ens(torch.zeros(2))
