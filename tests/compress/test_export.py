"""ONNX export and its check against PyTorch; the optional torch.export artefact."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdforge.compress.export import OnnxModule, check_onnx, export_onnx, torch_export
from kdforge.core.errors import CompressionError
from kdforge.models.cifar_resnet import CifarResNet
from kdforge.models.simple import cnn1d


@torch.library.custom_op("kdforge_test::wobble", mutates_args=())
def _wobble(x: torch.Tensor) -> torch.Tensor:
    return x * 1.5


@_wobble.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Wobbly(nn.Module):
    """A custom op that ONNX has no translation for, between two ordinary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.ops.kdforge_test.wobble(x))


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize("name", ["cnn1d", "resnet8"])
def test_float_export_predicts_exactly_like_pytorch(tmp_path, name):
    torch.manual_seed(0)
    if name == "cnn1d":
        model, shape = cnn1d(10, (1, 40), channels=(8, 8)), (1, 40)
    else:
        model, shape = CifarResNet(8, (8, 8, 16, 16), 10, in_channels=3), (3, 8, 8)
    model.eval()
    path = export_onnx(model, torch.randn(1, *shape), tmp_path / f"{name}.onnx")
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # one file, no .data
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    batches = [torch.randn(b, *shape) for b in (1, 7, 64)]  # several batch sizes
    out = check_onnx(path, model, batches)
    assert out["agreement_with_pytorch"] == 100.0
    assert out["max_abs_logit_diff"] < 1e-3
    assert out["samples"] == 72


def test_check_onnx_reads_a_data_set_and_sees_a_different_model(tmp_path):
    torch.manual_seed(0)
    model = cnn1d(10, (1, 40), channels=(8, 8)).eval()
    path = export_onnx(model, torch.randn(2, 1, 40), tmp_path / "m.onnx")
    data = TensorDataset(torch.randn(50, 1, 40), torch.zeros(50, dtype=torch.long))
    assert check_onnx(path, model, data, batch_size=16)["samples"] == 50
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.weight.mul_(-1.0)  # other logits: the check must notice
    out = check_onnx(path, other, torch.randn(128, 1, 40))
    assert out["agreement_with_pytorch"] < 50.0 and out["max_abs_logit_diff"] > 1e-2


def test_export_restores_the_training_flag(tmp_path):
    model = cnn1d(10, (1, 40), channels=(8,)).train()
    export_onnx(model, torch.randn(2, 1, 40), tmp_path / "m.onnx")
    assert model.training


def test_an_op_without_onnx_translation_raises_a_compression_error_naming_it(tmp_path):
    with pytest.raises(CompressionError, match="wobble") as info:
        export_onnx(Wobbly(), torch.randn(2, 6), tmp_path / "w.onnx")
    assert "Wobbly" in str(info.value)


def test_onnx_module_is_a_module_and_refuses_a_missing_file(tmp_path):
    torch.manual_seed(0)
    model = cnn1d(10, (1, 40), channels=(8,)).eval()
    runtime = OnnxModule(export_onnx(model, torch.randn(2, 1, 40), tmp_path / "m.onnx"))
    x = torch.randn(5, 1, 40)
    assert list(runtime.parameters()) == [] and runtime.eval() is runtime
    assert torch.allclose(nn.Sequential(runtime)(x), model(x), atol=1e-4)
    assert torch.equal(copy.deepcopy(runtime)(x), runtime(x))
    with pytest.raises(CompressionError, match="no ONNX file"):
        OnnxModule(tmp_path / "absent.onnx")


def test_torch_export_writes_a_pt2_file_or_says_why_not(tmp_path):
    done = torch_export(cnn1d(10, (1, 40), channels=(8,)), torch.randn(1, 1, 40),
                        tmp_path / "m.pt2")
    assert done.skipped is None and done.path.is_file()
    skipped = torch_export(Branchy(), torch.randn(2, 3), tmp_path / "b.pt2")
    assert skipped.path is None and "Branchy" in skipped.skipped
    assert not (tmp_path / "b.pt2").exists()
