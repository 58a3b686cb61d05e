"""What ``kdforge list`` prints: everything a config can name, and a model's layers."""

from __future__ import annotations

from typing import Any

from kdforge.api import build_model
from kdforge.core.errors import ConfigError


def registries() -> dict[str, Any]:
    """Everything a config names, by kind (what ``kdforge list KIND`` prints)."""
    from kdforge.data.datasets import DATASETS
    from kdforge.data.modalities import MODALITIES
    from kdforge.data.views import VIEWS
    from kdforge.engine.optim import OPTIMIZERS, SCHEDULES
    from kdforge.losses.base import LOSSES
    from kdforge.models import MODELS
    from kdforge.models.runs import LAYER_TYPES
    from kdforge.schemes import SCHEMES

    return {"models": MODELS, "losses": LOSSES, "datasets": DATASETS, "views": VIEWS,
            "schemes": SCHEMES, "modalities": MODALITIES, "optimizers": OPTIMIZERS,
            "schedules": SCHEDULES, "layer-types": LAYER_TYPES}


def list_registered(kind: str) -> list[tuple[str, str, str]]:
    """``(name, source, summary)`` of everything registered of one kind."""
    registry = registries().get(kind)
    if registry is None:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(registries())}")
    rows = [(e.name, e.source, e.summary) for e in registry.entries()]
    if kind == "datasets":  # a data set's options and their defaults, after its summary
        from kdforge.data.datasets import describe_options

        rows = [(n, s, f"{text} Options: {describe_options(registry.get(n))}")
                for n, s, text in rows]
    if kind == "models":
        rows += [("timm:NAME", "Wightman, PyTorch Image Models", "any timm architecture by name"),
                 ("torchvision:NAME", "torchvision", "any torchvision classification model")]
    return rows


def list_layers(model: str | None, overrides: list[str]) -> list[str]:
    """Module names (for feature taps) of a model, with each module's type."""
    import yaml

    from kdforge.models import layer_names

    if not model:
        raise ConfigError("kdforge list layers needs a MODEL name, e.g. resnet8")
    options: dict[str, Any] = {"num_classes": 10, "input_shape": [3, 32, 32]}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like key=value")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key] = value  # as --set does for a run config: not YAML, a string
    k, shape = options.pop("num_classes"), options.pop("input_shape")
    if not isinstance(shape, list) or not shape:
        raise ConfigError(f"--set input_shape={shape!r} must be a list of sizes, e.g. "
                          "input_shape=[3,32,32] (C, H, W) or input_shape=[1,40] (C, L)")
    shape = tuple(shape)
    net = build_model(model, options, k, shape)
    modules = dict(net.named_modules())
    return [f"{name:32s} {type(modules[name]).__name__}" for name in layer_names(net)]


__all__ = ["list_layers", "list_registered", "registries"]
