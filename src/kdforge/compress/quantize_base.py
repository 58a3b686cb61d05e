"""The interface of an int8 quantization route and their registry (see
:mod:`kdforge.compress.quantize` for the method and the routes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.registry import Registry


class QuantRoute:
    """One way to make an int8 model (a backend and its kernels).

    ``qat`` says whether :meth:`prepare_qat` gives a fake-quantized module; a route without
    quantization-aware training returns the float model itself there ("fine-tune in float,
    then PTQ"), and :meth:`convert` quantizes it post-training.
    """

    name: ClassVar[str] = ""
    qat: ClassVar[bool] = False

    def check(self, model: nn.Module, example: Tensor) -> None:
        """Raise :class:`~kdforge.core.errors.CompressionError` naming the layer or op and
        why, if this route cannot quantize ``model`` (inputs shaped like ``example``)."""
        raise NotImplementedError

    def ptq(self, model: nn.Module, calibration: list[Tensor]) -> nn.Module:
        """Post-training int8: observe activation ranges on the ``calibration`` batches,
        then quantize. The result is on the CPU, in eval mode, float batch -> logits."""
        raise NotImplementedError

    def prepare_qat(self, model: nn.Module, example: Tensor) -> nn.Module:
        """A trainable module simulating int8 in its forward pass (or ``model`` itself when
        ``qat`` is False)."""
        raise NotImplementedError

    def convert(self, prepared: nn.Module, calibration: list[Tensor]) -> nn.Module:
        """The int8 model from a :meth:`prepare_qat` module (or PTQ of a float one)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The route's options, written next to a saved model and rebuilt from on load."""
        return {}

    def save(self, module: nn.Module, out: Path) -> dict[str, Any]:
        """Write ``module``'s files into ``out``; returns the facts for its JSON file."""
        raise NotImplementedError

    def load(self, out: Path, meta: dict[str, Any], build_float: Callable[[], nn.Module],
             example: Tensor) -> nn.Module:
        """Read back what :meth:`save` wrote (``meta``: its JSON file)."""
        raise NotImplementedError

    def payload_bytes(self, module: nn.Module) -> int:
        """Bytes of the tensors (or graph) the deployed int8 model holds."""
        raise NotImplementedError


#: route name -> route class (constructed with its options, e.g. ``compile=False``)
QUANT_ROUTES: Registry[type[QuantRoute]] = Registry("int8 quantization route")


def check_calibration(calibration: list[Tensor]) -> list[Tensor]:
    if not calibration or not all(isinstance(b, Tensor) and b.ndim >= 1 for b in calibration):
        raise ConfigError("int8 calibration needs a non-empty list of input batches (tensors "
                          "shaped like the model's input); give a few training batches")
    return [b.detach().cpu().float() for b in calibration]


__all__ = ["QUANT_ROUTES", "QuantRoute", "check_calibration"]
