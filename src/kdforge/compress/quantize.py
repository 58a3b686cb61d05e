"""Int8 quantization of a trained model, post-training or quantization-aware.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (CVPR): a real value ``r`` is represented by an 8-bit
integer ``q`` through an affine map ``r = S (q - Z)`` with a float scale ``S`` and an
integer zero-point ``Z`` (Eq. 1), chosen so that the observed range ``[a, b]`` maps onto
the integer range and ``r = 0`` is exact. Weights are quantized per output channel
(symmetric, ``Z = 0``), activations per tensor, their ranges observed on calibration
batches (post-training quantization, PTQ). Quantization-aware training (Sec. 3) simulates
the rounding in the forward pass, ``q(r) = S (clamp(round(r / S) + Z, 0, 255) - Z)``
with the straight-through gradient, so training adapts the weights to it.

Polino, Pascanu & Alistarh 2018, "Model compression via distillation and quantization"
(ICLR): train the quantized student with a distillation loss from the float teacher
("quantized distillation"). kdforge's ``compress`` pipeline does this with the module of
:meth:`QuantRoute.prepare_qat` as the student and the original model as the teacher.

Routes (:data:`QUANT_ROUTES`; :func:`choose_route` picks the first that applies):

- ``pt2e`` (:mod:`kdforge.compress.quantize_pt2e`): torchao PT2E with the x86 Inductor
  quantizer, compiled by Inductor to oneDNN int8 kernels; has QAT.
- ``onnxruntime`` (:mod:`kdforge.compress.quantize_ort`): ONNX export and ONNX Runtime's
  static quantization; no QAT (fine-tune in float, then PTQ).

A quantized model is saved by :func:`save_quantized` into a directory: ``quantized.json``
(route, settings) and the route's files (pt2e: the prepared module's state as
safetensors; onnxruntime: the int8 ``.onnx`` file). :func:`load_quantized` reads JSON,
safetensors and ONNX only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.compress.export import OnnxModule
from kdforge.compress.quantize_base import QUANT_ROUTES, QuantRoute
from kdforge.compress.quantize_ort import OrtRoute
from kdforge.compress.quantize_pt2e import Pt2eInt8, Pt2eRoute
from kdforge.core.errors import CheckpointError, CompressionError, ConfigError
from kdforge.core.files import write_json
from kdforge.core.registry import call_with_checked_kwargs

META_FILE = "quantized.json"
FORMAT = "kdforge-int8"
DEFAULT_PREFERENCE = ("pt2e", "onnxruntime")


def build_route(name: str, **options: Any) -> QuantRoute:
    """The route registered as ``name`` with ``options`` (checked against its signature)."""
    return call_with_checked_kwargs("int8 route", name, QUANT_ROUTES.get(name), options)


def choose_route(model: nn.Module, example: Tensor,
                 prefer: Sequence[str] = DEFAULT_PREFERENCE,
                 options: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[str, dict[str, str]]:
    """The first route in ``prefer`` whose :meth:`~QuantRoute.check` passes on ``model``,
    and ``{route: reason}`` for each one refused before it (for the report). ``options``
    gives a route's options by name. No route applies -> :class:`CompressionError` with
    every reason."""
    if not prefer:
        raise ConfigError(f"choose_route needs at least one route; available: "
                          f"{', '.join(QUANT_ROUTES.names())}")
    reasons: dict[str, str] = {}
    for name in prefer:
        route = build_route(name, **(options or {}).get(name, {}))
        try:
            route.check(model, example)
        except CompressionError as exc:
            reasons[name] = str(exc)
            continue
        return name, reasons
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise CompressionError(f"no int8 route can quantize {type(model).__name__} ({detail})")


def _route_of(module: nn.Module) -> str:
    name = getattr(module, "quant_route", None)
    if name not in QUANT_ROUTES:
        raise CompressionError(f"{type(module).__name__} is not an int8 model of any route "
                               f"({', '.join(QUANT_ROUTES.names())}); quantize it first")
    return name


def save_quantized(out: str | os.PathLike, module: nn.Module,
                   route: QuantRoute | None = None) -> list[Path]:
    """Write the int8 ``module`` (from a route's :meth:`~QuantRoute.ptq` or
    :meth:`~QuantRoute.convert`) into the directory ``out``; returns the files written.
    ``route`` (default: the module's, default options) gives the settings recorded."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    route = route or build_route(_route_of(module), **getattr(module, "quant_settings", {}))
    facts = route.save(module, out)
    meta = {"format": FORMAT, "version": 1, "route": route.name,
            "settings": route.settings(), **facts}
    write_json(out / META_FILE, meta)
    return [out / META_FILE, *(out / f for f in facts.get("files", []))]


def read_quantized_meta(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(out)!r} holds no int8 model ({META_FILE}); save one "
                              "with save_quantized")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT or meta.get("route") not in QUANT_ROUTES:
            raise ValueError(f"format {meta.get('format')!r}, route {meta.get('route')!r}")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a kdforge int8 model ({exc})") from None
    return meta


def load_quantized(out: str | os.PathLike, build_float: Callable[[], nn.Module],
                   example: Tensor) -> nn.Module:
    """The int8 model saved in ``out``. ``build_float()`` builds the float architecture that
    was quantized (weights need not be trained: the saved state replaces them) and
    ``example`` is an input batch of the model's shape; the onnxruntime route needs
    neither."""
    meta = read_quantized_meta(out)
    route = build_route(meta["route"], **meta.get("settings", {}))
    return route.load(Path(out), meta, build_float, example)


def file_bytes(module_or_path: nn.Module | str | os.PathLike) -> int:
    """Bytes on disk of a saved int8 artefact: a file, a directory (every file in it), or a
    module (what :func:`save_quantized` writes for it). The pt2e artefact holds the float
    prepared state, so it is larger than the float model; :func:`payload_bytes` is the
    size of the int8 tensors a deployment holds."""
    if isinstance(module_or_path, nn.Module):
        with tempfile.TemporaryDirectory(prefix="kdforge-int8-") as tmp:
            return sum(p.stat().st_size for p in save_quantized(tmp, module_or_path))
    path = Path(module_or_path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    raise CheckpointError(f"no file or directory at {str(path)!r}")


def payload_bytes(module: nn.Module) -> int:
    """Bytes of what the int8 ``module`` runs on: the int8 weights, scales and biases of a
    pt2e graph, or the int8 ONNX file."""
    return build_route(_route_of(module)).payload_bytes(module)


__all__ = ["DEFAULT_PREFERENCE", "META_FILE", "QUANT_ROUTES", "OnnxModule", "OrtRoute",
           "Pt2eInt8", "Pt2eRoute", "QuantRoute", "build_route", "choose_route",
           "file_bytes", "load_quantized", "payload_bytes", "read_quantized_meta",
           "save_quantized"]
