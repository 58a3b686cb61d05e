"""The ``pt2e`` int8 route: torchao's PT2E flow with the x86 Inductor quantizer.

The float model is captured by ``torch.export`` (batch dimension symbolic), annotated by
``X86InductorQuantizer`` (int8 activations per tensor, asymmetric, histogram-calibrated;
int8 weights per output channel, symmetric: the affine scheme of Jacob et al. 2018) and
prepared: ``prepare_pt2e`` inserts observers for post-training calibration,
``prepare_qat_pt2e`` fake-quantizers (quantize-dequantize in the forward pass, straight-
through gradient) for quantization-aware training. ``convert_pt2e`` replaces them by
quantize / dequantize ops around float ops; ``torch.compile`` with Inductor *freezing*
then fuses those patterns into oneDNN int8 convolutions and matmuls. Without compile the
graph runs as a slow reference (dequantize -> float op -> quantize).

Compiling needs ``torch._inductor.config.freezing`` on while Inductor compiles, which is at
the first call of each new input shape, so every forward runs under that patch; shapes
compile statically (``dynamic=False``): a symbolic batch made oneDNN's int8 conv lowering
fail on torch 2.14. Some graphs do not lower at all (a ``Conv1d -> flatten -> Linear``
head: Inductor's int8 pass breaks the reshape): :meth:`Pt2eRoute.check` compiles a copy and
refuses the model with the reason.

Saved without pickle: the *prepared* module's ``state_dict`` (weights, observer ranges or
fake-quant scales) as safetensors plus JSON; loading exports and prepares a fresh float
build the same way, loads the state and converts, which reproduces the int8 model exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.compress.export import export_example, failure_reason
from kdforge.compress.quantize_base import QUANT_ROUTES, QuantRoute, check_calibration
from kdforge.core.errors import CheckpointError, CompressionError

STATE_FILE = "quantized.safetensors"
PAPER = ('Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient '
         'Integer-Arithmetic-Only Inference" (CVPR); torchao PT2E, X86InductorQuantizer')


class Pt2eInt8(nn.Module):
    """A converted PT2E int8 graph, run under ``torch.compile`` (or eagerly), in no-grad
    mode on the CPU. ``state`` is the prepared module's state it was converted from (what
    :meth:`Pt2eRoute.save` writes); ``example_shape`` the export example's shape."""

    quant_route = "pt2e"

    def __init__(self, converted: torch.fx.GraphModule, state: dict[str, Tensor], *,
                 qat: bool, example_shape: list[int], compile: bool = True) -> None:
        super().__init__()
        self.graph_module = converted
        self.qat = qat
        self.example_shape = list(example_shape)
        self.compiled = compile
        self.training = False
        self.__dict__["state"] = state
        self.__dict__["_run"] = (torch.compile(converted, dynamic=False) if compile
                                 else converted)

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().to("cpu", torch.float32)
        if not self.compiled:
            with torch.no_grad():
                return self._run(x)
        from torch._inductor import config as inductor_config

        try:
            with torch.no_grad(), inductor_config.patch(freezing=True):
                return self._run(x)
        except Exception as exc:
            raise CompressionError(
                f"torch.compile of the pt2e int8 graph failed on a batch shaped "
                f"{list(x.shape)} ({failure_reason(exc)}); use route 'onnxruntime', or "
                "compile=False (eager reference kernels, slower than float)") from None

    @property
    def quant_settings(self) -> dict[str, Any]:
        return {"compile": self.compiled}

    def train(self, mode: bool = True) -> Pt2eInt8:
        self.training = mode  # an int8 graph has no train mode: only the flag changes
        return self


def _allow_train_eval(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """torchao's ``allow_exported_model_train_eval`` (``train()``/``eval()`` switch batch
    norm and dropout in the exported graph), made to return the module like nn.Module's."""
    import types

    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(prepared)
    switch = prepared.train

    def train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
        switch(mode)
        return self

    def eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return self.train(False)

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(eval, prepared)
    return prepared


def _is_prepared(model: nn.Module) -> bool:
    from torchao.quantization.pt2e import FakeQuantizeBase, ObserverBase

    return any(isinstance(m, (ObserverBase, FakeQuantizeBase)) for m in model.modules())


@QUANT_ROUTES.register_named("pt2e", source=PAPER)
class Pt2eRoute(QuantRoute):
    """torchao PT2E + X86InductorQuantizer, compiled by Inductor (oneDNN int8 kernels)."""

    qat = True

    def __init__(self, *, compile: bool = True) -> None:
        self.compile = bool(compile)

    def settings(self) -> dict[str, Any]:
        return {"compile": self.compile}

    # -- the flow -----------------------------------------------------------------------
    def _prepare(self, model: nn.Module, example: Tensor, *, qat: bool) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        model = model.cpu().train(qat)
        x = export_example(example)
        try:
            graph = torch.export.export(model, (x,),
                                        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
        except Exception as exc:
            raise CompressionError(f"pt2e: torch.export cannot capture "
                                   f"{type(model).__name__} ({failure_reason(exc)})") from None
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=qat))
        try:
            prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
        except Exception as exc:
            raise CompressionError(f"pt2e: the x86 quantizer cannot prepare "
                                   f"{type(model).__name__} ({failure_reason(exc)})") from None
        prepared.meta["kdforge_example_shape"] = list(x.shape)
        return prepared

    def _convert(self, prepared: torch.fx.GraphModule, *, qat: bool,
                 warmup: Tensor | None) -> Pt2eInt8:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        shape = prepared.meta.get("kdforge_example_shape")
        if qat:
            move_exported_model_to_eval(prepared)
        state = {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items()}
        try:
            converted = convert_pt2e(prepared)
        except Exception as exc:
            raise CompressionError(f"pt2e: convert_pt2e failed ({failure_reason(exc)})") from None
        module = Pt2eInt8(converted, state, qat=qat, example_shape=shape, compile=self.compile)
        if warmup is not None:  # compile now, so that a graph Inductor cannot lower fails here
            module(warmup)
        return module

    def check(self, model: nn.Module, example: Tensor) -> None:
        x = export_example(example)
        try:
            module = self.ptq(copy.deepcopy(model), [x])
            module(x)
        except CompressionError as exc:
            raise CompressionError(f"pt2e cannot quantize {type(model).__name__}: {exc}") from None
        except Exception as exc:
            raise CompressionError(f"pt2e cannot quantize {type(model).__name__}: "
                                   f"{failure_reason(exc)}") from None

    @torch.no_grad()
    def ptq(self, model: nn.Module, calibration: list[Tensor]) -> nn.Module:
        """Calibrate observers on every batch (``model`` itself is not changed)."""
        batches = check_calibration(calibration)
        prepared = self._prepare(copy.deepcopy(model).eval(), batches[0], qat=False)
        for batch in batches:
            prepared(batch)
        return self._convert(prepared, qat=False, warmup=batches[0])

    def prepare_qat(self, model: nn.Module, example: Tensor) -> nn.Module:
        """The exported graph with fake quantizers, in train mode; ``train()``/``eval()``
        switch batch norm and dropout (torchao's ``allow_exported_model_train_eval``)."""
        prepared = self._prepare(copy.deepcopy(model), example, qat=True)
        return _allow_train_eval(prepared).train()

    def convert(self, prepared: nn.Module, calibration: list[Tensor]) -> nn.Module:
        """Int8 from a :meth:`prepare_qat` module (a copy: ``prepared`` stays usable), its
        fake-quant scales as trained; a float module is quantized by :meth:`ptq`."""
        batches = check_calibration(calibration)
        if not _is_prepared(prepared):
            return self.ptq(prepared, batches)
        return self._convert(copy.deepcopy(prepared).cpu(), qat=True, warmup=batches[0])

    # -- files --------------------------------------------------------------------------
    def save(self, module: nn.Module, out: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        if not isinstance(module, Pt2eInt8):
            raise CompressionError(f"route pt2e saves a Pt2eInt8 module, not "
                                   f"{type(module).__name__}")
        save_file(module.state, str(out / STATE_FILE))
        import torchao

        return {"qat": module.qat, "example_shape": module.example_shape,
                "files": [STATE_FILE], "torch": torch.__version__,
                "torchao": torchao.__version__}

    def load(self, out: Path, meta: dict[str, Any], build_float: Callable[[], nn.Module],
             example: Tensor) -> nn.Module:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        saved = list(meta.get("example_shape", []))
        if list(export_example(example).shape[1:]) != saved[1:]:
            raise CheckpointError(f"the int8 model in {str(out)!r} was exported on inputs "
                                  f"shaped {saved[1:]}; give an example of that shape, not "
                                  f"{list(example.shape[1:])}")
        qat = bool(meta.get("qat", False))
        with torch.random.fork_rng(devices=[]):
            float_model = build_float()
        prepared = self._prepare(float_model, torch.zeros(saved), qat=qat)
        if qat:
            _allow_train_eval(prepared)
        try:
            state = load_file(str(out / STATE_FILE))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"the int8 state {str(out / STATE_FILE)!r} is not a readable "
                                  f"safetensors file ({exc}); the artefact is damaged: rerun "
                                  "the int8 stage (kdforge compress --overwrite)") from None
        try:
            prepared.load_state_dict(state, strict=True)
        except (RuntimeError, OSError) as exc:
            raise CheckpointError(f"the int8 state in {str(out)!r} does not fit the rebuilt "
                                  f"model ({str(exc).splitlines()[0]}); build_float must "
                                  "build the architecture that was quantized") from None
        return self._convert(prepared, qat=qat, warmup=None)

    def payload_bytes(self, module: nn.Module) -> int:
        """Bytes of the tensors the converted graph reads (int8 weights, scales, biases)."""
        gm = module.graph_module
        total = 0
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                value = gm
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                if isinstance(value, Tensor):
                    total += value.numel() * value.element_size()
        return total


__all__ = ["Pt2eInt8", "Pt2eRoute"]
