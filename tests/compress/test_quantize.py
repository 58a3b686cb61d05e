"""Int8 routes: pt2e (torchao PT2E) and onnxruntime; PTQ, QAT, choice, files."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F

from kdforge.compress import quantize as Q
from kdforge.core.errors import CheckpointError, CompressionError, ConfigError
from kdforge.models.simple import cnn1d, cnn2d

SHAPE_2D, SHAPE_1D = (1, 8, 8), (1, 40)


def _cnn2d():
    return cnn2d(10, SHAPE_2D, channels=(8, 16)).eval()


def _cnn1d():
    return cnn1d(10, SHAPE_1D, channels=(8, 8)).eval()


def _calibration(shape, n=4):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, *shape, generator=gen) for _ in range(n)]


def _agreement(a, b, x):
    with torch.no_grad():
        return 100.0 * float((a(x).argmax(-1) == b(x).argmax(-1)).float().mean())


def _targets(module):
    return {str(n.target) for n in module.graph_module.graph.nodes if n.op == "call_function"}


def test_pt2e_ptq_agrees_with_float_and_runs_quantize_dequantize_ops():
    model = _cnn2d()
    before = copy.deepcopy(model.state_dict())
    int8 = Q.build_route("pt2e").ptq(model, _calibration(SHAPE_2D))  # compiled
    assert isinstance(int8, torch.nn.Module) and not int8.training
    x = torch.randn(256, *SHAPE_2D)
    assert _agreement(int8, model, x) >= 95.0
    ops = _targets(int8)
    assert any("quantize_per_tensor" in t for t in ops)
    assert any("dequantize_per_channel" in t for t in ops)  # int8 weights, per channel
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pt2e_save_load_round_trip_is_identical_and_pickle_free(tmp_path):
    route = Q.build_route("pt2e", compile=False)
    int8 = route.ptq(_cnn2d(), _calibration(SHAPE_2D))
    files = Q.save_quantized(tmp_path / "int8", int8)
    assert sorted(p.suffix for p in (tmp_path / "int8").iterdir()) == [".json", ".safetensors"]
    assert sorted(files) == sorted((tmp_path / "int8").iterdir())
    assert Q.file_bytes(tmp_path / "int8") == Q.file_bytes(int8) == sum(
        p.stat().st_size for p in files)
    assert Q.payload_bytes(int8) < Q.file_bytes(int8)  # int8 weights vs float state
    # a fresh, untrained float build: the saved state replaces its weights
    loaded = Q.load_quantized(tmp_path / "int8", lambda: cnn2d(10, SHAPE_2D, channels=(8, 16)),
                              torch.randn(1, *SHAPE_2D))
    x = torch.randn(64, *SHAPE_2D)
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
    with pytest.raises(CheckpointError, match="shaped"):
        Q.load_quantized(tmp_path / "int8", _cnn2d, torch.randn(1, 1, 6, 6))
    with pytest.raises(CheckpointError, match="holds no int8 model"):
        Q.load_quantized(tmp_path, _cnn2d, torch.randn(1, *SHAPE_2D))


def test_pt2e_refuses_conv1d_flatten_linear_and_choose_route_falls_back():
    model, example = _cnn1d(), torch.randn(1, *SHAPE_1D)
    try:
        Q.build_route("pt2e").check(model, example)
    except CompressionError as exc:
        reason = str(exc)
    else:
        pytest.skip("this torch compiles the int8 Conv1d -> flatten -> Linear graph: "
                    "nothing to refuse")
    assert "CNN1d" in reason and "reshape" in reason  # the failing op (the flatten)
    name, reasons = Q.choose_route(model, example)
    assert name == "onnxruntime" and set(reasons) == {"pt2e"}
    assert "reshape" in reasons["pt2e"]


def test_choose_route_takes_the_first_that_applies_and_checks_its_input():
    assert Q.choose_route(_cnn2d(), torch.randn(1, *SHAPE_2D),
                          prefer=("onnxruntime", "pt2e")) == ("onnxruntime", {})
    with pytest.raises(ConfigError, match="at least one route"):
        Q.choose_route(_cnn2d(), torch.randn(1, *SHAPE_2D), prefer=())
    with pytest.raises(ConfigError, match="unknown int8 quantization route"):
        Q.choose_route(_cnn2d(), torch.randn(1, *SHAPE_2D), prefer=("tensorrt",))
    with pytest.raises(ConfigError, match="calibration"):
        Q.build_route("pt2e").ptq(_cnn2d(), [])


@pytest.mark.parametrize("fmt,nodes", [("qdq", {"QuantizeLinear", "DequantizeLinear"}),
                                       ("qoperator", {"QLinearConv"})])
def test_onnxruntime_route_int8_graph_agrees_and_is_a_module(tmp_path, fmt, nodes):
    model = _cnn1d()
    route = Q.build_route("onnxruntime", quant_format=fmt)
    int8 = route.ptq(model, _calibration(SHAPE_1D))
    assert isinstance(int8, torch.nn.Module) and int8.eval() is int8
    assert list(int8.parameters()) == []
    files = Q.save_quantized(tmp_path, int8)
    onnx_file = next(p for p in files if p.suffix == ".onnx")
    ops = {n.op_type for n in onnx.load(str(onnx_file)).graph.node}
    assert nodes <= ops
    x = torch.randn(256, *SHAPE_1D)
    assert _agreement(int8, model, x) >= 95.0
    loaded = Q.load_quantized(tmp_path, lambda: None, x)
    assert torch.equal(loaded(x), int8(x)) and torch.equal(copy.deepcopy(int8)(x), int8(x))
    assert Q.read_quantized_meta(tmp_path)["settings"]["quant_format"] == fmt
    assert Q.file_bytes(onnx_file) == Q.payload_bytes(int8)


def test_onnxruntime_has_no_qat_it_fine_tunes_the_float_model():
    route, model = Q.build_route("onnxruntime"), _cnn1d()
    assert route.qat is False
    assert route.prepare_qat(model, torch.randn(1, *SHAPE_1D)) is model
    with pytest.raises(ConfigError, match="threads"):
        Q.build_route("onnxruntime", threads=0)


def _cnn2d_no_bn():
    return cnn2d(10, SHAPE_2D, channels=(8, 16), batchnorm=False).eval()


def test_pt2e_qat_trains_under_a_kd_loss_then_converts(tmp_path):
    # no batch norm: torchao's conv-BN folding at convert exports ~100 patterns (~30 s here)
    teacher = _cnn2d_no_bn()
    route = Q.build_route("pt2e", compile=False)
    assert route.qat is True
    student = route.prepare_qat(teacher, torch.randn(1, *SHAPE_2D))
    assert student.training
    student.eval()
    student.train()  # the exported graph switches modes (batch norm) like a module
    params = dict(student.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    before = {k: v.detach().clone() for k, v in params.items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    x = torch.randn(32, *SHAPE_2D)
    with torch.no_grad():
        target = F.softmax(teacher(x) / 4.0, -1)
    loss = F.kl_div(F.log_softmax(student(x) / 4.0, -1), target, reduction="batchmean")
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in params.items())
    int8 = route.convert(student, _calibration(SHAPE_2D, 1))
    assert student.training  # convert worked on a copy
    test = torch.randn(128, *SHAPE_2D)
    with torch.no_grad():
        out = int8(test)
    assert out.shape == (128, 10) and torch.isfinite(out).all()
    assert _agreement(int8, teacher, test) >= 80.0  # one small step away from the float model
    assert any("quantize_per_tensor" in t for t in _targets(int8))
    Q.save_quantized(tmp_path, int8)
    loaded = Q.load_quantized(tmp_path, _cnn2d_no_bn, torch.randn(1, *SHAPE_2D))
    with torch.no_grad():
        assert torch.equal(loaded(test), out)
