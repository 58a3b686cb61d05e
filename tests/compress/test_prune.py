"""Pruning: global magnitude masks and dependency-graph channel removal (tiny CPU models)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import kdforge.compress.prune as P
from kdforge.core.errors import CompressionError, ConfigError
from kdforge.engine.checkpoint import save_weights
from kdforge.models.factory import create_model
from kdforge.models.runs import MODEL_FILE, WEIGHTS, load_run_model, save_run_model

CNN1D = {"channels": [64, 128, 128]}


def _saved_and_reloaded(tmp_path, model, name, options, shape):
    model.eval()
    save_weights(model, tmp_path / WEIGHTS)
    save_run_model(tmp_path, model, name=name, options=options, num_classes=10,
                   input_shape=shape)
    return load_run_model(tmp_path).eval()


def _mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(),
                          nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -5.0, 3.0], [0.2, -0.05, 4.0]]))
        model[2].weight.copy_(torch.tensor([[-0.3, 2.0], [0.01, 6.0]]))
        model[4].weight.copy_(torch.tensor([[0.001, 0.002], [0.003, 7.0]]))
    return model


# --------------------------------------------------------------------------- unstructured

def test_unstructured_zeroes_the_globally_smallest_weights_and_keeps_the_classifier():
    model = _mlp()
    report = P.prune_unstructured(model, 0.4)
    # 10 weights; the 4 smallest |w| overall: 0.01 (layer 2), 0.05, 0.1, 0.2 (layer 0).
    # A per-layer 40% would instead zero 0.05, 0.1 and 0.01, 0.3.
    assert torch.equal(model[0].weight == 0, torch.tensor([[True, False, False],
                                                           [True, True, False]]))
    assert torch.equal(model[2].weight == 0, torch.tensor([[False, False], [True, False]]))
    assert model[2].weight[0, 0].item() == pytest.approx(-0.3)
    assert not hasattr(model[4], "weight_mask")  # the classifier stays dense
    assert model[4].weight[0, 0].item() == pytest.approx(0.001)
    assert report["layers"] == ["0", "2"]
    assert report["sparsity"] == pytest.approx(0.4)
    assert "does not speed up" in report["note"]


def test_masks_survive_an_optimizer_step_and_make_permanent_keeps_the_zeros():
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), channels=[8, 16])
    P.prune_unstructured(model, 0.6)
    conv = model.blocks[1][0]
    zeros = conv.weight == 0
    orig = conv.weight_orig.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    model(torch.randn(4, 1, 40)).pow(2).mean().backward()
    opt.step()
    model(torch.randn(4, 1, 40))  # the mask is re-applied on every forward
    assert not torch.equal(conv.weight_orig, orig)  # the step moved the weights...
    assert torch.equal(conv.weight == 0, zeros)  # ...but not the pruned ones
    assert P.sparsity(model) == pytest.approx(0.6, abs=1e-3)

    x = torch.randn(2, 1, 40)
    model.eval()
    expected = model(x)
    P.make_permanent(model)
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in model.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    assert isinstance(conv.weight, nn.Parameter) and torch.equal(conv.weight == 0, zeros)
    assert torch.equal(model(x), expected)
    assert P.sparsity(model) == pytest.approx(0.6, abs=1e-3)


def test_a_masked_model_round_trips_through_the_run_files(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), channels=[8, 16])
    P.prune_unstructured(model, 0.5)
    loaded = _saved_and_reloaded(tmp_path, model, "cnn1d", {"channels": [8, 16]}, (1, 40))
    meta = json.loads((tmp_path / MODEL_FILE).read_text())
    assert meta["pruned"] == {"blocks.0.0": ["weight"], "blocks.1.0": ["weight"]}
    assert torch.equal(loaded.blocks[1][0].weight_mask, model.blocks[1][0].weight_mask)
    x = torch.randn(3, 1, 40)
    assert torch.equal(loaded(x), model(x))


def test_unstructured_bad_arguments_say_the_fix():
    with pytest.raises(ConfigError, match=r"fraction in \(0, 1\)"):
        P.prune_unstructured(_mlp(), 1.0)
    with pytest.raises(ConfigError, match="named_modules"):
        P.prune_unstructured(_mlp(), 0.5, layers=["fc"])


# ----------------------------------------------------------------------------- structured

def _check_widths(report, round_to=8):
    for name, (before, after) in report["channels"].items():
        assert after <= before, name
        assert after == before or after % round_to == 0, (name, before, after)


def test_cnn1d_halves_its_parameters_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), **CNN1D).train()
    tracked = model.blocks[0][1].num_batches_tracked.clone()
    report = P.prune_structured(model, torch.randn(2, 1, 40), params_ratio=0.5)
    assert model.training and torch.equal(model.blocks[0][1].num_batches_tracked, tracked)
    assert report["params_after"] == P.count_parameters(model)
    assert report["params_after"] <= 0.5 * report["params_before"]
    assert report["params_ratio"] == pytest.approx(
        report["params_after"] / report["params_before"])
    _check_widths(report)
    assert report["channels"]["fc"] == (10, 10)
    assert all(b > a for b, a in report["channels"].values() if b != 10)  # all shrank
    widths = [blk[0].out_channels for blk in model.blocks]
    assert [blk[1].num_features for blk in model.blocks] == widths
    assert model.fc.in_features == widths[-1] * 5  # flatten: 5 positions left of 40
    assert "latency_ms_after" not in report
    x = torch.randn(4, 1, 40)
    model.eval()
    assert model(x).shape == (4, 10)
    loaded = _saved_and_reloaded(tmp_path, model, "cnn1d", CNN1D, (1, 40))
    assert torch.equal(loaded(x), model(x))


def test_resnet20_keeps_residual_adds_consistent_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", 10, (1, 8, 8))
    report = P.prune_structured(model, torch.randn(1, 1, 8, 8), params_ratio=0.5, steps=3)
    assert report["params_after"] <= 0.5 * report["params_before"]
    _check_widths(report)
    assert model.layer3[0].conv1.out_channels < 64
    width = model.conv1.out_channels
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            out = block.conv2.out_channels
            assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
            assert block.bn2.num_features == out
            if block.downsample is None:
                assert out == width == block.conv1.in_channels  # identity shortcut
            else:
                assert block.downsample[0].out_channels == block.downsample[1].num_features == out
            width = out
    assert model.fc.in_features == width and model.fc.out_features == 10
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    assert model(x).shape == (3, 10)
    loaded = _saved_and_reloaded(tmp_path, model, "resnet20", {}, (1, 8, 8))
    assert torch.equal(loaded(x), model(x))


def test_the_filters_of_smallest_l1_norm_are_the_ones_removed():
    conv = nn.Conv1d(1, 16, 3, bias=False)
    head = nn.Linear(16, 2, bias=False)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool1d(1), nn.Flatten(), head)
    scale = torch.tensor([5, 1, 7, 2, 9, 3, 8, 4, 16, 10, 15, 11, 14, 12, 13, 6.0])
    with torch.no_grad():
        conv.weight.copy_(scale.view(16, 1, 1) * torch.tensor([1.0, -1.0, 1.0]))
        head.weight.fill_(0.5)  # the coupled input columns do not change the ranking
    original = conv.weight.detach().clone()
    report = P.prune_structured(model, torch.randn(1, 1, 8), params_ratio=0.5)
    kept = scale.argsort(descending=True)[:8].sort().values  # the 8 largest L1 norms
    assert report["channels"]["0"] == (16, 8)
    assert torch.equal(conv.weight, original[kept])
    assert head.weight.shape == (2, 8)


def test_small_and_ignored_layers_keep_their_width():
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), channels=[4, 64, 64])
    report = P.prune_structured(model, torch.randn(1, 1, 40), params_ratio=0.7,
                                ignored=["blocks.2"])
    assert report["channels"]["blocks.0.0"] == (4, 4)
    assert report["unpruned"] == ["blocks.0.0"]
    assert report["channels"]["blocks.2.0"] == (64, 64)
    assert report["channels"]["blocks.1.0"][1] < 64
    assert report["params_after"] <= 0.7 * report["params_before"]


def _fake_latency(model, inputs, device="cpu"):
    """Deterministic 'latency': proportional to the parameters."""
    return P.count_parameters(model) / 1000.0


def test_latency_budget_stops_at_the_first_step_under_it(monkeypatch):
    seen = []

    def measure(model, inputs, device="cpu"):
        assert inputs.shape == (3, 1, 40) and device == "cpu"
        seen.append(_fake_latency(model, inputs))
        return seen[-1]

    monkeypatch.setattr(P, "measure_latency", measure)
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), **CNN1D)
    budget = 0.4 * P.count_parameters(model) / 1000.0
    report = P.prune_structured(model, torch.randn(1, 1, 40), latency_ms=budget,
                                latency_batch=3, steps=4)
    before, smallest, *steps = seen  # unpruned, the reachability check, then each step
    assert before == report["latency_ms_before"] and smallest <= budget
    assert steps[-1] == report["latency_ms_after"] <= budget
    assert all(lat > budget for lat in steps[:-1])
    assert report["pruning_ratio"] == pytest.approx(0.25 * len(steps))
    _check_widths(report)


def test_unreachable_targets_raise_and_leave_the_model_alone(monkeypatch):
    monkeypatch.setattr(P, "measure_latency", lambda model, inputs, device="cpu": 10.0)
    torch.manual_seed(0)
    model = create_model("cnn1d", 10, (1, 40), **CNN1D)
    before = P.count_parameters(model)
    with pytest.raises(CompressionError, match=r"latency_ms 1\.0 .*10\.000 ms"):
        P.prune_structured(model, torch.randn(1, 1, 40), latency_ms=1.0)
    with pytest.raises(CompressionError, match=r"params_ratio 0\.002.* keeps \d+ of"):
        P.prune_structured(model, torch.randn(1, 1, 40), params_ratio=0.002)
    assert P.count_parameters(model) == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "needs a target"),
    ({"params_ratio": 0.0}, r"params_ratio must be in \(0, 1\]"),
    ({"params_ratio": 1.5}, r"params_ratio must be in \(0, 1\]"),
    ({"latency_ms": -1.0}, "positive budget"),
    ({"params_ratio": 0.5, "round_to": 0}, "round_to must be a positive int"),
    ({"params_ratio": 0.5, "ignored": ["fcc"]}, "closest valid names: 'fc'"),
])
def test_structured_bad_arguments_say_the_fix(kwargs, message):
    model = create_model("cnn1d", 10, (1, 40), channels=[8, 16])
    with pytest.raises(ConfigError, match=message):
        P.prune_structured(model, torch.randn(1, 1, 40), **kwargs)


class _Gain(nn.Module):
    """A fixed per-channel gain (a buffer): torch-pruning cannot know to shrink it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("gain", torch.ones(channels, 1))

    def forward(self, x):
        return x * self.gain


def test_layers_torch_pruning_cannot_handle_are_named():
    model = nn.Sequential(nn.Conv1d(1, 32, 3, padding=1), _Gain(32), nn.Conv1d(32, 32, 3),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 4))
    with pytest.raises(CompressionError, match="cannot shrink layer '1'.*'ignored'"):
        P.prune_structured(model, torch.randn(1, 1, 16), params_ratio=0.5)
    assert model[0].out_channels == 32  # found on a copy, before touching the model
    with pytest.raises(CompressionError, match="example_inputs do not fit.*layer '0'"):
        P.prune_structured(model, torch.randn(1, 3, 16), params_ratio=0.5)


def test_a_tracing_failure_of_torch_pruning_is_wrapped(monkeypatch):
    import torch_pruning as tp

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(tp.pruner, "MetaPruner", broken)
    model = create_model("cnn1d", 10, (1, 40), channels=[16, 16])
    with pytest.raises(CompressionError, match="cannot trace CNN1d.*unsupported op"):
        P.prune_structured(model, torch.randn(1, 1, 40), params_ratio=0.5)
