"""The ``int8`` stage: 8-bit integer weights and activations, post-training or
quantization-aware, on the route that applies to the model.

Jacob et al. 2018 (CVPR) for the affine int8 scheme and quantization-aware training;
Polino, Pascanu & Alistarh 2018 (ICLR) for distilling a quantized student from the float
teacher. ``route: auto`` takes the first route of :func:`~kdforge.compress.quantize.choose_route`
that can quantize the model (``pt2e``: torchao PT2E + Inductor's oneDNN int8 kernels;
``onnxruntime``: ONNX Runtime's static quantization), and the stage's facts record which
one was used and why the others were refused.

Without a fine-tune (chain ``none``) the float model is quantized after calibration on
training batches (PTQ). With one, on a route with QAT (pt2e) the fine-tune trains the
fake-quantized module itself, which is then converted: the KD chain is quantized
distillation. On a route without QAT (onnxruntime) the float model is fine-tuned, then
quantized (PTQ); the facts say ``qat: false``. The next stage starts from the float input
model (the float counterpart of this stage's int8 model).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from kdforge.compress.stages import Artefact, Stage, StageContext, StageOptions, register
from kdforge.core.errors import ConfigError

PAPERS = ("Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient "
          "Integer-Arithmetic-Only Inference (CVPR); Polino et al. 2018, Model compression "
          "via distillation and quantization (ICLR)")


class Int8Options(StageOptions):
    route: str = Field("auto", description="auto, or a route: pt2e, onnxruntime")
    prefer: list[str] = Field(default_factory=lambda: ["pt2e", "onnxruntime"],
                              description="with route auto: the routes tried, in order")
    qat: bool = Field(True, description="fine-tune the fake-quantized model where the "
                                        "route can (else: fine-tune in float, then PTQ)")
    route_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per route, e.g. {pt2e: {compile: false}}")


@register("int8", source=PAPERS)
class Int8(Stage):
    """Int8 quantization, PTQ or QAT, on the first route that applies."""

    Options = Int8Options
    options: Int8Options

    def _route(self, model: nn.Module, ctx: StageContext):
        from kdforge.compress import quantize

        o = self.options
        if o.route == "auto":
            name, refused = quantize.choose_route(model, ctx.example, o.prefer,
                                                  o.route_options)
        else:
            if o.route not in quantize.QUANT_ROUTES:
                raise ConfigError(f"int8 route {o.route!r} is unknown; use auto or one of "
                                  f"{quantize.QUANT_ROUTES.names()}")
            name, refused = o.route, {}
        route = quantize.build_route(name, **o.route_options.get(name, {}))
        route.check(model, ctx.example)
        self.report = {"route": name, "routes_refused": refused}
        return route

    def apply(self, model: nn.Module, ctx: StageContext, *, finetune: bool) -> nn.Module:
        route = self._route(model, ctx)
        qat = finetune and self.options.qat and bool(getattr(route, "qat", False))
        self.report["qat"] = qat
        return route.prepare_qat(model, ctx.example) if qat else model

    def finish(self, model: nn.Module, ctx: StageContext, out: Path, *,
               previous: nn.Module) -> Artefact:
        from kdforge.compress import quantize

        route = self._route(previous, ctx)
        int8 = route.convert(model.cpu().eval(), ctx.calibration)
        quantize.save_quantized(out, int8, route)
        return self._artefact(int8, previous, out)

    def load(self, out: Path, ctx: StageContext, *, previous: nn.Module) -> Artefact:
        from kdforge.compress import quantize

        int8 = quantize.load_quantized(out, lambda: copy.deepcopy(previous), ctx.example)
        return self._artefact(int8, previous, out)

    def _artefact(self, int8: nn.Module, previous: nn.Module, out: Path) -> Artefact:
        from kdforge.compress import quantize

        files = [p for p in out.iterdir() if p.is_file() and p.name in _artefact_names(out)]
        facts = {"payload_bytes": quantize.payload_bytes(int8),
                 "route": quantize.read_quantized_meta(out)["route"]}
        return Artefact(int8, previous, files, facts)


def _artefact_names(out: Path) -> set[str]:
    """The files :func:`~kdforge.compress.quantize.save_quantized` wrote (not the
    fine-tune's checkpoint or logs)."""
    from kdforge.compress.quantize import META_FILE, read_quantized_meta

    return {META_FILE, *read_quantized_meta(out).get("files", [])}


__all__ = ["Int8", "Int8Options"]
