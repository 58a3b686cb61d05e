"""A run's model on disk: safetensors weights plus a structural description, no pickle.

``model.json`` names the registered architecture the model was built from (name, options,
classes, input shape) and describes every way the trained module departs from a fresh
build of it, so a network that no registered name rebuilds can still be saved, reloaded,
evaluated and used as a teacher:

- ``layers``: layers whose type or size differ from the fresh build (a pruned channel
  count, a removed block replaced by ``Identity``), as a layer type from
  :data:`LAYER_TYPES` and its constructor arguments (JSON). Rebuilding replaces them.
- ``pruned``: tensors reparametrised by ``torch.nn.utils.prune`` (``weight_orig`` times a
  ``weight_mask``): rebuilding re-applies the reparametrisation, then loads the mask.

Loading reads JSON and raw tensor bytes only, and builds only registered layer types: a
file handed to kdforge cannot run code. Compression stages add their layer types to
:data:`LAYER_TYPES`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.core.files import write_json
from kdforge.core.registry import Registry

MODEL_FILE = "model.json"
WEIGHTS = "model.safetensors"
MODEL_FORMAT = "kdforge-model"

#: layer type -> (arguments of an instance, build from arguments)
LAYER_TYPES: Registry[tuple[Callable[[nn.Module], dict[str, Any]],
                            Callable[..., nn.Module]]] = Registry("layer type")


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size), "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _norm_args(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
            "affine": m.affine, "track_running_stats": m.track_running_stats}


LAYER_TYPES.add("Conv1d", (_conv_args, nn.Conv1d), summary="torch.nn.Conv1d")
LAYER_TYPES.add("Conv2d", (_conv_args, nn.Conv2d), summary="torch.nn.Conv2d")
LAYER_TYPES.add("Linear", (lambda m: {"in_features": m.in_features,
                                      "out_features": m.out_features,
                                      "bias": m.bias is not None}, nn.Linear),
                summary="torch.nn.Linear")
LAYER_TYPES.add("BatchNorm1d", (_norm_args, nn.BatchNorm1d), summary="torch.nn.BatchNorm1d")
LAYER_TYPES.add("BatchNorm2d", (_norm_args, nn.BatchNorm2d), summary="torch.nn.BatchNorm2d")
LAYER_TYPES.add("LayerNorm", (lambda m: {"normalized_shape": list(m.normalized_shape),
                                         "eps": m.eps,
                                         "elementwise_affine": m.elementwise_affine},
                              nn.LayerNorm), summary="torch.nn.LayerNorm")
LAYER_TYPES.add("Identity", (lambda m: {}, nn.Identity), summary="torch.nn.Identity")


def _layer(module: nn.Module) -> dict[str, Any] | None:
    kind = type(module).__name__
    if kind not in LAYER_TYPES or type(module) is not LAYER_TYPES.get(kind)[1]:
        return None
    return {"type": kind, "args": LAYER_TYPES.get(kind)[0](module)}


def describe_model(model: nn.Module, base: nn.Module, *, name: str, options: dict[str, Any],
                   num_classes: int, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The description of ``model``, built from ``name`` (``base``: a fresh build of it)."""
    base_modules = dict(base.named_modules())
    layers: dict[str, Any] = {}
    pruned: dict[str, list[str]] = {}
    for path, module in model.named_modules():
        names = [n[:-5] for n, _ in module.named_parameters(recurse=False) if n.endswith("_orig")]
        if names:
            pruned[path] = names
        if not path:
            continue
        mine, theirs = _layer(module), _layer(base_modules[path]) if path in base_modules else None
        if mine is not None and mine != theirs:
            layers[path] = mine
        elif mine is None and type(module) is not type(base_modules.get(path)):
            raise CheckpointError(
                f"layer {path!r} of the trained model is a {type(module).__name__}, which "
                f"kdforge cannot describe safely; describable layer types: "
                f"{', '.join(LAYER_TYPES.names())}"
            )
    return {"format": MODEL_FORMAT, "version": 2, "name": name, "options": options,
            "num_classes": num_classes, "input_shape": list(input_shape),
            "layers": layers, "pruned": pruned}


def save_run_model(run_dir: str | os.PathLike, model: nn.Module, *, name: str,
                   options: dict[str, Any], num_classes: int,
                   input_shape: tuple[int, ...]) -> Path:
    """Write ``model.json`` for ``model`` (whose weights the trainer wrote) into ``run_dir``."""
    from kdforge.models.factory import create_model

    with torch.random.fork_rng(devices=[]):  # the fresh build must not move the run's RNG
        base = create_model(name, num_classes, input_shape, **options)
    inner = getattr(model, "_orig_mod", model)
    meta = describe_model(inner, base, name=name, options=options, num_classes=num_classes,
                          input_shape=input_shape)
    weights = Path(run_dir) / WEIGHTS
    if weights.is_file():  # loading checks it: a damaged weights file is refused, not used
        meta["weights_sha256"] = _sha256(weights)
    return write_json(Path(run_dir) / MODEL_FILE, meta)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_description(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file() or not (Path(run_dir) / WEIGHTS).is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no trained model ({MODEL_FILE} and {WEIGHTS}); train it "
            "first (kdforge train) and give its run directory"
        )
    try:
        meta = json.loads(path.read_text())
        for key in ("name", "num_classes", "input_shape"):
            meta[key]  # noqa: B018  (a missing key is a damaged file)
        if not isinstance(meta.get("options", {}), dict) or not isinstance(
                meta.get("layers", {}), dict) or not isinstance(meta.get("pruned", {}), dict):
            raise ValueError("'options', 'layers' and 'pruned' must be mappings")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a kdforge model description ({exc})") from None
    return meta


def rebuild(meta: dict[str, Any]) -> nn.Module:
    """The module described by ``meta``, with untrained weights."""
    from kdforge.models.factory import create_model

    model = create_model(meta["name"], meta["num_classes"], tuple(meta["input_shape"]),
                         **meta.get("options", {}))
    for path, layer in meta.get("layers", {}).items():
        parent_path, _, attr = path.rpartition(".")
        modules = dict(model.named_modules())
        if parent_path not in modules or not hasattr(modules[parent_path], attr):
            raise CheckpointError(f"the model description names layer {path!r}, which "
                                  f"{meta['name']!r} does not have")
        try:
            build = LAYER_TYPES.get(layer["type"])[1]
            new = build(**layer["args"])
        except (ConfigError, TypeError, KeyError) as exc:
            raise CheckpointError(f"layer {path!r} of the model description cannot be built: "
                                  f"{exc}") from None
        setattr(modules[parent_path], attr, new)
    modules = dict(model.named_modules())
    for path, names in meta.get("pruned", {}).items():
        for tensor_name in names if isinstance(names, list) else [names]:
            if path not in modules or not isinstance(getattr(modules[path], str(tensor_name),
                                                             None), torch.Tensor):
                raise CheckpointError(f"the model description prunes {path!r}.{tensor_name!r}, "
                                      f"which {meta['name']!r} does not have")
            prune.identity(modules[path], tensor_name)
    return model


def load_run_model(run_dir: str | os.PathLike) -> nn.Module:
    """A run's trained model: rebuilt from ``model.json``, weights from ``model.safetensors``."""
    from kdforge.models.factory import load_weights

    meta = read_model_description(run_dir)
    weights = Path(run_dir) / WEIGHTS
    recorded = meta.get("weights_sha256")  # absent in runs of kdforge < 0.3
    if recorded is not None and _sha256(weights) != recorded:
        raise CheckpointError(
            f"{str(weights)!r} does not match the sha256 that {MODEL_FILE} recorded when the "
            "run finished: the file is damaged or was replaced. Restore it from a copy or "
            "train the run again (kdforge train CONFIG --overwrite)")
    try:
        model = rebuild(meta)
    except ConfigError as exc:  # options the registered model does not take
        raise CheckpointError(f"the model description of run {str(run_dir)!r} cannot be "
                              f"rebuilt: {exc}") from None
    try:
        return load_weights(model, Path(run_dir) / WEIGHTS, model_name=meta["name"])
    except ConfigError as exc:
        raise CheckpointError(f"the weights of run {str(run_dir)!r} do not fit its model "
                              f"description: {exc}") from None


__all__ = ["LAYER_TYPES", "MODEL_FILE", "WEIGHTS", "describe_model", "load_run_model",
           "read_model_description", "rebuild", "save_run_model"]
