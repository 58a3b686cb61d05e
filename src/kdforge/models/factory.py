"""``create_model``: zoo names, ``timm:NAME`` and ``torchvision:NAME``, and local weights.

Nothing here downloads: timm models are built with ``pretrained=False``, torchvision models
with ``weights=None`` (and ``weights_backbone=None`` where the builder has one). Trained
weights come from a local ``.safetensors`` file or torch checkpoint via ``weights=``.
"""

from __future__ import annotations

import inspect
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, unknown_name_message
from kdforge.core.registry import call_with_checked_kwargs
from kdforge.models.registry import MODELS

_VISION_EXTRA = "pip install kdforge[vision]"
_PREFIXES = ("timm", "torchvision")
_DOWNLOAD_OPTIONS = (
    "pretrained",
    "weights",
    "weights_backbone",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
)


def create_model(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier ``(B, *input_shape) -> (B, num_classes)`` logits.

    Args:
        name: a zoo name (``resnet20``, ``wrn_40_2``, ``mlp``, ... see ``MODELS.names()``),
            ``timm:NAME`` or ``torchvision:NAME``.
        num_classes: number of logits.
        input_shape: shape of ONE sample without the batch dimension: ``(C, H, W)`` for
            images, ``(C, L)`` for 1-D signals, ``(D,)`` for vectors.
        weights: optional local ``.safetensors`` file or torch checkpoint (a state dict, or a
            dict holding one under ``'model'`` or ``'state_dict'``), loaded strictly.
        **kwargs: options of the model (e.g. ``hidden=(128,)`` for ``mlp``); for timm and
            torchvision models they go to the model's constructor.

    Raises:
        ConfigError: unknown name or option, input_shape of the wrong rank, missing
            timm/torchvision, weights that do not fit.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string; got {name!r}")
    classes = _check_num_classes(num_classes)
    shape = _check_input_shape(input_shape)
    prefix, sep, arch = name.partition(":")
    if sep:
        if prefix == "timm":
            model = _timm_model(arch, classes, shape, kwargs)
        elif prefix == "torchvision":
            model = _torchvision_model(arch, classes, shape, kwargs)
        else:
            raise ConfigError(
                f"unknown model source {prefix!r} in {name!r}; use a zoo name "
                f"({', '.join(MODELS.names()[:6])}, ...), 'timm:NAME' or 'torchvision:NAME'"
            )
    else:
        try:
            factory = MODELS.get(name)
        except ConfigError as err:
            raise ConfigError(
                f"{err}. Models from other libraries are named 'timm:NAME' or 'torchvision:NAME'."
            ) from None
        model = call_with_checked_kwargs("model", name, _bind(factory, classes, shape), kwargs)
    if weights is not None:
        load_weights(model, weights, model_name=name)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def layer_names(model: nn.Module) -> list[str]:
    """Names of all submodules in definition order, as ``FeatureTap`` and loss terms take them."""
    return [n for n, _ in model.named_modules() if n]


def load_weights(
    model: nn.Module, weights: str | os.PathLike, model_name: str | None = None
) -> nn.Module:
    """Load a local ``.safetensors`` file or torch checkpoint into ``model`` strictly.

    A checkpoint may be a state dict or a dict holding one under ``'model'`` or
    ``'state_dict'``; a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix
    on every key is removed. Any missing or unexpected key or shape mismatch raises a
    ``ConfigError`` naming them; nothing is loaded in that case. Returns ``model``.
    """
    label = model_name or type(model).__name__
    path = Path(os.fspath(weights)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file for model {label!r} not found: {str(path)!r} "
            "(give a local .safetensors file or torch checkpoint; nothing is downloaded)"
        )
    state = _strip_prefix(_read_state_dict(path), model.state_dict())
    _check_fit(model, state, path, label)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # anything the key/shape check above did not anticipate
        raise ConfigError(f"weights {str(path)!r} do not fit model {label!r}: {err}") from None
    return model


# ----------------------------------------------------------------------------- helpers


def _check_num_classes(num_classes: Any) -> int:
    try:
        value = operator.index(num_classes)
    except TypeError:
        value = 0
    if isinstance(num_classes, bool) or value < 1:
        raise ConfigError(f"num_classes must be a positive int; got {num_classes!r}")
    return value


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    hint = "(C, H, W) for images, (C, L) for 1-D signals, (D,) for vectors, without the batch dimension"
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ConfigError(f"input_shape must be a tuple of ints, {hint}; got {input_shape!r}")
    try:
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        raise ConfigError(
            f"input_shape must be a tuple of ints, {hint}; got {input_shape!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(
            f"input_shape must be non-empty positive sizes, {hint}; got {input_shape!r}"
        )
    return shape


def _bind(factory: Callable[..., nn.Module], num_classes: int, input_shape: tuple[int, ...]):
    """``factory`` with ``num_classes`` and ``input_shape`` filled in; its signature shows only
    the remaining options, so ``call_with_checked_kwargs`` lists exactly those."""

    def bound(**options: Any) -> nn.Module:
        return factory(num_classes=num_classes, input_shape=input_shape, **options)

    sig = inspect.signature(factory)
    bound.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in sig.parameters.items() if n not in ("num_classes", "input_shape")]
    )
    return bound


def _reject_download_options(source: str, arch: str, kwargs: Mapping[str, Any]) -> None:
    bad = [k for k in kwargs if k in _DOWNLOAD_OPTIONS]
    if bad:
        raise ConfigError(
            f"{source} model {arch!r}: option(s) {bad} are not allowed; kdforge never downloads "
            "weights. Pass a local file as weights=PATH (a .safetensors file or torch checkpoint)."
        )


def _image_channels(source: str, arch: str, shape: tuple[int, ...]) -> int:
    if len(shape) != 3:
        raise ConfigError(
            f"{source} model {arch!r} expects input_shape of rank 3 (C, H, W), e.g. (3, 32, 32); "
            f"got {shape} of rank {len(shape)}. For 1-D signals or vectors use the zoo models "
            "cnn1d, mlp or logreg."
        )
    return shape[0]


def _timm_model(arch: str, num_classes: int, shape: tuple[int, ...], kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model 'timm:{arch}' needs the timm package, which is not installed; {_VISION_EXTRA}"
        ) from None
    channels = _image_channels("timm", arch, shape)
    _reject_download_options("timm", arch, kwargs)
    if not arch or not timm.is_model(arch):
        raise ConfigError(unknown_name_message("timm model", arch, timm.list_models()))
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=channels, **kwargs
        )
    except TypeError as err:
        raise ConfigError(f"timm model {arch!r} rejected options {sorted(kwargs)}: {err}") from None


def _torchvision_model(
    arch: str, num_classes: int, shape: tuple[int, ...], kwargs: dict
) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ConfigError(
            f"model 'torchvision:{arch}' needs the torchvision package, which is not installed; "
            f"{_VISION_EXTRA}"
        ) from None
    channels = _image_channels("torchvision", arch, shape)
    if channels != 3:
        raise ConfigError(
            f"torchvision model {arch!r} takes 3-channel images, but input_shape {shape} has "
            f"{channels} channel(s). Use 'timm:{arch}' or another timm model (timm sets the "
            "input channels with in_chans), or a zoo model, which take any channel count."
        )
    _reject_download_options("torchvision", arch, kwargs)
    names = torchvision.models.list_models()
    if arch not in names:
        raise ConfigError(unknown_name_message("torchvision model", arch, names))
    builder = torchvision.models.get_model_builder(arch)
    extra: dict[str, Any] = {}
    if "weights_backbone" in inspect.signature(builder).parameters:
        extra["weights_backbone"] = None  # detection/segmentation builders default to downloading
    try:
        return torchvision.models.get_model(
            arch, weights=None, num_classes=num_classes, **extra, **kwargs
        )
    except TypeError as err:
        raise ConfigError(
            f"torchvision model {arch!r} rejected options {sorted(kwargs)}: {err}"
        ) from None


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError and OSError
            raise ConfigError(f"cannot read safetensors file {str(path)!r}: {err}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... from torch.load
        raise ConfigError(
            f"cannot read weights {str(path)!r} with torch.load(weights_only=True): {err}. "
            "Save a state dict (torch.save(model.state_dict(), path)) or a .safetensors file."
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ConfigError(
            f"weights {str(path)!r} hold a {type(obj).__name__}, not a state dict (a dict of "
            "tensors, or a dict with a 'model' or 'state_dict' entry holding one)"
        )
    return obj


def _strip_prefix(state: Mapping[str, Any], target: Mapping[str, Tensor]) -> dict[str, Any]:
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in target)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _check_fit(model: nn.Module, state: Mapping[str, Any], path: Path, label: str) -> None:
    own = model.state_dict()
    # BatchNorm fills in a missing num_batches_tracked itself, so strict loading allows it.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], Tensor) and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched, 3)}")
    raise ConfigError(
        f"weights {str(path)!r} do not fit model {label!r}: "
        + "; ".join(parts)
        + ". Were they saved from the same architecture with the same num_classes and input "
        "channels?"
    )
