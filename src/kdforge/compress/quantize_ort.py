"""The ``onnxruntime`` int8 route: export to ONNX, static int8 quantization, ONNX Runtime.

The float model is exported (:func:`kdforge.compress.export.export_onnx`), then
``onnxruntime.quantization.quantize_static`` computes activation ranges on the calibration
batches (min-max) and quantizes weights per output channel (int8, symmetric) and
activations per tensor (uint8, asymmetric): the affine scheme of Jacob et al. 2018. In QDQ
format (the default) the graph holds ``QuantizeLinear`` / ``DequantizeLinear`` pairs that
ONNX Runtime fuses into integer kernels when it loads the model; ``QOperator`` format
writes ``QLinearConv`` / ``QLinearMatMul`` nodes directly.

This route has no quantization-aware training (``qat = False``): fine-tune in float, then
PTQ. :meth:`OrtRoute.prepare_qat` returns the float model itself. The int8 ``.onnx`` file is
the saved artefact (ONNX Runtime executes no Python).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from kdforge.compress.export import INPUT_NAME, OnnxModule, export_onnx, failure_reason
from kdforge.compress.quantize_base import QUANT_ROUTES, QuantRoute, check_calibration
from kdforge.core.errors import CheckpointError, CompressionError, ConfigError

ONNX_FILE = "model.int8.onnx"
PAPER = ('Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient '
         'Integer-Arithmetic-Only Inference" (CVPR); ONNX Runtime quantize_static')


class _Batches:
    """An ONNX Runtime ``CalibrationDataReader`` over torch batches."""

    def __init__(self, batches: list[Tensor]) -> None:
        self._feeds = iter([{INPUT_NAME: b.numpy()} for b in batches])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


@QUANT_ROUTES.register_named("onnxruntime", source=PAPER)
class OrtRoute(QuantRoute):
    """ONNX export + ONNX Runtime static int8 (per-channel weights), run by ONNX Runtime."""

    qat = False

    def __init__(self, *, threads: int = 1, quant_format: Literal["qdq", "qoperator"] = "qdq",
                 per_channel: bool = True) -> None:
        if quant_format not in ("qdq", "qoperator"):
            raise ConfigError(f"onnxruntime quant_format must be 'qdq' or 'qoperator'; got "
                              f"{quant_format!r}")
        if int(threads) < 1:
            raise ConfigError(f"onnxruntime threads must be >= 1; got {threads!r}")
        self.threads = int(threads)
        self.quant_format = quant_format
        self.per_channel = bool(per_channel)

    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, "quant_format": self.quant_format,
                "per_channel": self.per_channel}

    def check(self, model: nn.Module, example: Tensor) -> None:
        try:
            self.ptq(model, [example])(example)
        except CompressionError as exc:
            raise CompressionError(f"onnxruntime cannot quantize {type(model).__name__}: "
                                   f"{exc}") from None
        except Exception as exc:
            raise CompressionError(f"onnxruntime cannot quantize {type(model).__name__}: "
                                   f"{failure_reason(exc)}") from None

    def ptq(self, model: nn.Module, calibration: list[Tensor]) -> nn.Module:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        batches = check_calibration(calibration)
        reader = type("Reader", (_Batches, CalibrationDataReader), {})(batches)
        fmt = QuantFormat.QDQ if self.quant_format == "qdq" else QuantFormat.QOperator
        with tempfile.TemporaryDirectory(prefix="kdforge-int8-") as tmp:
            float_path = export_onnx(copy.deepcopy(model).cpu(), batches[0],
                                     Path(tmp) / "float.onnx")
            int8_path = Path(tmp) / ONNX_FILE
            try:
                quantize_static(str(float_path), str(int8_path), reader, quant_format=fmt,
                                per_channel=self.per_channel,
                                activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
            except Exception as exc:
                raise CompressionError(f"onnxruntime quantize_static failed "
                                       f"({failure_reason(exc)})") from None
            module = OnnxModule(int8_path, threads=self.threads)
        module.quant_route = self.name
        module.quant_settings = self.settings()
        return module.eval()

    def prepare_qat(self, model: nn.Module, example: Tensor) -> nn.Module:
        """The float ``model`` itself (no QAT here: fine-tune in float, then PTQ)."""
        return model

    def convert(self, prepared: nn.Module, calibration: list[Tensor]) -> nn.Module:
        return self.ptq(prepared, calibration)

    def save(self, module: nn.Module, out: Path) -> dict[str, Any]:
        if not isinstance(module, OnnxModule):
            raise CompressionError(f"route onnxruntime saves an OnnxModule, not "
                                   f"{type(module).__name__}")
        module.save(out / ONNX_FILE)
        return {"files": [ONNX_FILE]}

    def load(self, out: Path, meta: dict[str, Any], build_float: Callable[[], nn.Module],
             example: Tensor) -> nn.Module:
        path = out / ONNX_FILE
        if not path.is_file():
            raise CheckpointError(f"{str(out)!r} holds no {ONNX_FILE}; quantize again")
        module = OnnxModule(path, threads=self.threads)
        module.quant_route = self.name
        module.quant_settings = self.settings()
        return module.eval()

    def payload_bytes(self, module: nn.Module) -> int:
        return len(module.model_bytes)


__all__ = ["OrtRoute"]
