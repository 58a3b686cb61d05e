"""create_model: timm/torchvision adapters, local weights, and helpful errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kdforge.core.errors import ConfigError
from kdforge.core.taps import FeatureTap
from kdforge.models import create_model, load_weights


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------ timm / torchvision


def test_timm_resnet18_builds_without_weights_and_taps_layer3() -> None:
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", 10, (3, 32, 32))
    with FeatureTap(model, ["layer3"]) as tap:
        logits = model(torch.randn(2, 3, 32, 32))
        assert tap.pop()["layer3"].shape == (2, 256, 2, 2)
    assert logits.shape == (2, 10)


def test_timm_takes_one_channel_images() -> None:
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", 5, (1, 32, 32))
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_torchvision_mobilenet_v3_small_builds_and_taps_features() -> None:
    pytest.importorskip("torchvision")
    model = create_model("torchvision:mobilenet_v3_small", 10, (3, 32, 32))
    with FeatureTap(model, ["features.3"]) as tap:
        logits = model(torch.randn(2, 3, 32, 32))
        assert tap.pop()["features.3"].shape[:2] == (2, 24)
    assert logits.shape == (2, 10)


def test_torchvision_rejects_non_rgb_and_suggests_timm() -> None:
    pytest.importorskip("torchvision")
    with pytest.raises(ConfigError, match="3-channel") as err:
        create_model("torchvision:resnet18", 10, (1, 28, 28))
    assert "timm:resnet18" in str(err.value) and "in_chans" in str(err.value)


def test_unknown_timm_and_torchvision_names_list_close_ones() -> None:
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    with pytest.raises(ConfigError, match="unknown timm model 'resnet19'.*'resnet18'"):
        create_model("timm:resnet19", 10, (3, 32, 32))
    with pytest.raises(
        ConfigError, match="unknown torchvision model 'mobilenet_v3_smal'.*'mobilenet_v3_small'"
    ):
        create_model("torchvision:mobilenet_v3_smal", 10, (3, 32, 32))
    with pytest.raises(ConfigError, match="unknown model source 'tv'"):
        create_model("tv:resnet18", 10, (3, 32, 32))


def test_adapters_refuse_download_options_and_bad_ranks() -> None:
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("timm:resnet18", 10, (3, 32, 32), pretrained=True)
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("torchvision:resnet18", 10, (3, 32, 32), pretrained=True)
    with pytest.raises(ConfigError, match=r"rank 3 \(C, H, W\)"):
        create_model("timm:resnet18", 10, (1, 40))
    with pytest.raises(ConfigError, match="rejected options"):
        create_model("timm:resnet18", 10, (3, 32, 32), not_an_option=1)


# ------------------------------------------------------------------ weights


def test_safetensors_weights_restore_the_same_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet8", 10, (1, 8, 8))
    # Move the BN running statistics away from their init so they are checked as well.
    source.train()(torch.randn(4, 1, 8, 8) * 3 + 1)
    path = tmp_path / "resnet8.safetensors"
    save_file(source.state_dict(), str(path))
    torch.manual_seed(1)
    restored = create_model("resnet8", 10, (1, 8, 8), weights=path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(_outputs(source, x), _outputs(restored, x))


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix"])
def test_torch_checkpoints_load(tmp_path, wrap: str) -> None:
    torch.manual_seed(0)
    source = create_model("mlp", 3, (6,), hidden=(5,))
    state = source.state_dict()
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    obj = state if wrap in ("plain", "module_prefix") else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pt")
    torch.manual_seed(1)
    restored = create_model("mlp", 3, (6,), hidden=(5,), weights=str(tmp_path / "ckpt.pt"))
    x = torch.randn(4, 6)
    assert torch.equal(_outputs(source, x), _outputs(restored, x))


def test_weights_of_another_architecture_name_the_keys(tmp_path) -> None:
    path = tmp_path / "resnet8.safetensors"
    save_file(create_model("resnet8", 10, (3, 8, 8)).state_dict(), str(path))
    with pytest.raises(ConfigError) as err:
        create_model("wrn_16_1", 10, (3, 8, 8), weights=path)
    msg = str(err.value)
    assert "do not fit model 'wrn_16_1'" in msg
    assert "missing key(s): block1.0" in msg
    assert "unexpected key(s): bn1.num_batches_tracked" in msg or "layer1.0" in msg


def test_weights_with_other_num_classes_name_the_shape_mismatch(tmp_path) -> None:
    path = tmp_path / "resnet8_10.safetensors"
    save_file(create_model("resnet8", 10, (3, 8, 8)).state_dict(), str(path))
    with pytest.raises(ConfigError, match=r"fc\.weight: file \(10, 64\) vs model \(100, 64\)"):
        create_model("resnet8", 100, (3, 8, 8), weights=path)


def test_weights_file_problems(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        create_model("logreg", 2, (3,), weights=tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights"):
        create_model("logreg", 2, (3,), weights=garbage)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a state dict"):
        load_weights(create_model("logreg", 2, (3,)), tmp_path / "list.pt")


# ------------------------------------------------------------------ helpful errors


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet21'.*'resnet20'") as err:
        create_model("resnet21", 10, (3, 32, 32))
    assert "timm:NAME" in str(err.value)


def test_unknown_option_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="no option 'hiden'") as err:
        create_model("mlp", 10, (4,), hiden=(3,))
    msg = str(err.value)
    assert "hidden, dropout, activation" in msg
    assert "num_classes" not in msg and "input_shape" not in msg
    with pytest.raises(ConfigError, match=r"no option 'width'.*allowed options: \(none\)"):
        create_model("resnet20", 10, (3, 32, 32), width=2)


@pytest.mark.parametrize(
    ("name", "shape", "pattern"),
    [
        ("resnet8", (1, 40), r"rank 3 \(C, H, W\).*got \(1, 40\) of rank 2.*cnn1d"),
        ("wrn_40_2", (784,), r"rank 3 \(C, H, W\)"),
        ("mobilenetv2", (3, 32), r"rank 3"),
        ("cnn2d", (64,), r"rank 3"),
        ("cnn1d", (1, 8, 8), r"rank 2 \(C, L\).*got \(1, 8, 8\) of rank 3"),
    ],
)
def test_wrong_input_rank_names_the_expected_rank(name, shape, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        create_model(name, 10, shape)


@pytest.mark.parametrize("shape", [784, (), (3, 0, 8), ("3", 8, 8), "3x32x32"])
def test_bad_input_shape_values(shape) -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        create_model("mlp", 10, shape)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("mlp", num_classes, (4,))
