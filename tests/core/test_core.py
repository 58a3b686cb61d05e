import pytest
import torch
from torch import nn

from kdforge import ConfigError, FeatureTap, Outputs, Registry, to_outputs
from kdforge.core.errors import closest
from tests.conftest import TinyNet


def test_feature_tap_collects_named_outputs_with_grad():
    net = TinyNet()
    tap = FeatureTap(net, ["conv", "bn"])
    x = torch.randn(2, 1, 8, 8)
    net(x)
    feats = tap.pop()
    assert set(feats) == {"conv", "bn"}
    assert feats["conv"].shape == (2, 4, 8, 8)
    assert torch.allclose(feats["conv"], net.conv(x))
    feats["bn"].sum().backward()
    assert net.conv.weight.grad is not None  # features keep their graph
    with pytest.raises(ConfigError, match="did not run"):
        tap.pop()  # the store is cleared after each pop: no stale features
    tap.remove()
    net(x)
    assert tap.names == []


def test_feature_tap_unknown_layer_lists_closest_names():
    with pytest.raises(ConfigError) as err:
        FeatureTap(TinyNet(), ["convv"])
    message = str(err.value)
    assert "'convv'" in message and "'conv'" in message and "named_modules" in message


def test_feature_tap_takes_first_tensor_of_tuple_outputs():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[1]

    net = Net()
    with FeatureTap(net, ["pair"]) as tap:
        net(torch.ones(1, 2))
        assert torch.equal(tap.pop()["pair"], torch.full((1, 2), 2.0))


def test_to_outputs_accepts_common_model_returns():
    logits = torch.randn(3, 5)
    assert to_outputs(logits).logits is logits
    assert to_outputs((logits, torch.zeros(1))).logits is logits
    assert to_outputs({"logits": logits}).logits is logits

    class HF:
        def __init__(self):
            self.logits = logits

    assert to_outputs(HF()).logits is logits
    with pytest.raises(ConfigError, match="cannot find logits"):
        to_outputs("nope")


def test_outputs_feature_error_names_collected():
    out = Outputs(torch.zeros(1, 2), {"layer1": torch.zeros(1)})
    with pytest.raises(ConfigError, match="layer1"):
        out.feature("layer9", "student")


def test_registry_lookup_and_errors():
    reg = Registry("widget")

    @reg.register("alpha", source="paper A")
    def alpha():
        """Alpha widget."""

    assert reg.get("alpha") is alpha
    assert reg.entry("alpha").summary == "Alpha widget."
    assert "alpha" in reg and len(reg) == 1
    with pytest.raises(ConfigError, match="unknown widget 'alpah'.*'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="twice"):
        reg.add("alpha", alpha)


def test_closest_always_suggests_something():
    assert closest("layer3", ["layer1", "layer2", "fc"])[0] in ("layer1", "layer2")
    assert closest("zzz", ["a", "b"]) == ["a", "b"]


def test_feature_tap_can_collect_a_module_input():
    net = TinyNet()
    with FeatureTap(net, ["relu@input", "relu"]) as tap:
        x = torch.randn(2, 1, 8, 8)
        net(x)
        feats = tap.pop()
    pre = net.bn(net.conv(x))
    assert torch.allclose(feats["relu@input"], pre)
    assert torch.allclose(feats["relu"], pre.relu())
    assert (feats["relu@input"] < 0).any()
    with pytest.raises(ConfigError, match="after '@'"):
        FeatureTap(net, ["relu@grad"])
