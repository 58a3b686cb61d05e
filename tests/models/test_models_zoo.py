"""The zoo: every model builds, maps (B, *input_shape) to (B, K), trains, and can be tapped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.core.taps import FeatureTap
from kdforge.models import MODELS, count_parameters, create_model, layer_names

IMAGE_MODELS = [
    n for n in MODELS.names() if n.startswith(("resnet", "wrn", "mobilenetv2", "cnn2d"))
]


def sample_shape(name: str) -> tuple[int, ...]:
    """A tiny input that fits the model: MNIST-1D signals, else 8x8 one-channel digits."""
    return (1, 40) if name == "cnn1d" else (1, 8, 8)


def test_registry_lists_the_whole_zoo_with_sources_and_summaries() -> None:
    expected = {
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet8x4",
        "resnet32x4",
        "wrn",
        "wrn_16_1",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
        "mobilenetv2",
        "mobilenetv2_x0_5",
        "mlp",
        "cnn1d",
        "cnn2d",
        "logreg",
    }
    assert expected <= set(MODELS.names())
    for entry in MODELS.entries():
        assert entry.source, entry.name
        assert entry.summary, entry.name


@pytest.mark.parametrize("name", MODELS.names())
def test_every_zoo_model_gives_logits_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    shape = sample_shape(name)
    model = create_model(name, 7, shape)
    x = torch.randn(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert not any(getattr(m, "inplace", False) for m in model.modules()), "in-place op"


@pytest.mark.parametrize("name", ["resnet8", "resnet8x4", "wrn_16_1", "mobilenetv2_x0_5", "cnn2d"])
def test_image_models_take_cifar_shaped_input(name: str) -> None:
    model = create_model(name, 100, (3, 32, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["mlp", "logreg"])
@pytest.mark.parametrize("shape", [(40,), (1, 40), (1, 8, 8)])
def test_flat_models_take_any_rank(name: str, shape: tuple[int, ...]) -> None:
    assert create_model(name, 3, shape)(torch.randn(2, *shape)).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet20", 0.28e6),  # CRD Table: CIFAR-100 parameter counts
        ("resnet56", 0.86e6),
        ("resnet8x4", 1.23e6),
        ("resnet32x4", 7.43e6),
        ("wrn_40_2", 2.26e6),
        ("wrn_16_2", 0.70e6),
        ("wrn_40_1", 0.57e6),
    ],
)
def test_parameter_counts_match_the_crd_paper(name: str, expected: float) -> None:
    n = count_parameters(create_model(name, 100, (3, 32, 32)))
    assert abs(n - expected) / expected < 0.05, n


def test_count_parameters_trainable_only() -> None:
    model = create_model("logreg", 10, (4,))
    assert count_parameters(model) == 4 * 10 + 10
    model.fc.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 40
    assert count_parameters(model) == 50


def test_resnet8_layer3_tap_gives_64_channel_maps() -> None:
    model = create_model("resnet8", 10, (3, 32, 32))
    with FeatureTap(model, ["layer3"]) as tap:
        model(torch.randn(2, 3, 32, 32))
        feat = tap.pop()["layer3"]
    assert feat.shape == (2, 64, 8, 8)
    feat.pow(2).mean().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize(
    ("name", "shape", "layer", "feature_shape"),
    [
        ("resnet8", (1, 8, 8), "layer3", (2, 64, 2, 2)),
        ("resnet8x4", (3, 32, 32), "layer3", (2, 256, 8, 8)),
        ("wrn_16_2", (3, 32, 32), "block3", (2, 128, 8, 8)),
        ("mobilenetv2_x0_5", (3, 32, 32), "features.7", (2, 160, 4, 4)),
        ("mlp", (1, 8, 8), "blocks.1", (2, 256)),
        ("cnn1d", (1, 40), "blocks.2", (2, 32, 5)),
        ("cnn2d", (1, 8, 8), "blocks.1", (2, 64, 4, 4)),
    ],
)
def test_named_layers_can_be_tapped(name, shape, layer, feature_shape) -> None:
    model = create_model(name, 10, shape)
    assert layer in layer_names(model)
    with FeatureTap(model, [layer]) as tap:
        model(torch.randn(2, *shape))
        assert tap.pop()[layer].shape == feature_shape


def test_layer_names_are_in_definition_order_and_non_empty() -> None:
    names = layer_names(create_model("resnet8", 10, (3, 32, 32)))
    assert "" not in names
    top = [n for n in names if "." not in n]
    assert top == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    wrn_top = [n for n in layer_names(create_model("wrn_16_1", 10, (3, 8, 8))) if "." not in n]
    assert wrn_top == ["conv1", "block1", "block2", "block3", "bn1", "relu", "avgpool", "fc"]


def test_init_is_deterministic_under_a_seed() -> None:
    torch.manual_seed(3)
    a = create_model("wrn_16_1", 10, (3, 8, 8)).state_dict()
    torch.manual_seed(3)
    b = create_model("wrn_16_1", 10, (3, 8, 8)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_options() -> None:
    mlp = create_model("mlp", 4, (10,), hidden=[16, 8, 4], dropout=0.1, activation="gelu")
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [16, 8, 4, 4]
    assert create_model("mlp", 4, (10,), hidden=[])(torch.randn(2, 10)).shape == (2, 4)
    wide = create_model("wrn", 10, (3, 8, 8), depth=10, widen_factor=3)
    assert wide.fc.in_features == 192
    m1d = create_model("cnn1d", 10, (2, 40), channels=[8, 16], kernel_size=3, pool="avg")
    assert m1d(torch.randn(2, 2, 40)).shape == (2, 10)
    plain = create_model("cnn2d", 10, (1, 8, 8), channels=(8, 8, 8, 8), batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    half = create_model("mobilenetv2", 10, (3, 8, 8), width_mult=0.5)
    assert count_parameters(half) == count_parameters(
        create_model("mobilenetv2_x0_5", 10, (3, 8, 8))
    )


def test_bad_options_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"\(depth - 4\) % 6"):
        create_model("wrn", 10, (3, 32, 32), depth=17)
    with pytest.raises(ConfigError, match="unknown activation 'swishy'.*relu"):
        create_model("mlp", 10, (4,), activation="swishy")
    with pytest.raises(ConfigError, match="hidden"):
        create_model("mlp", 10, (4,), hidden=[8, -1])
    with pytest.raises(ConfigError, match="pool must be"):
        create_model("cnn1d", 10, (1, 40), pool="mean")
    with pytest.raises(ConfigError, match="too small"):
        create_model("cnn2d", 10, (1, 8, 8), channels=(8,) * 5)
