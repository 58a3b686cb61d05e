"""The ``onnx`` stage: the chain's float model exported to ONNX and checked by running the
file with ONNX Runtime on the test split against PyTorch's predictions.

The record's ``agreement_with_pytorch`` is the percent of test predictions the ONNX file
and the PyTorch model share, ``max_abs_logit_diff`` the largest logit difference. The
measured module is the ONNX file under ONNX Runtime (CPU, the pipeline's threads).
``torch_export: true`` also writes a ``torch.export`` program (``model.pt2``) where the
model can be captured; kdforge never loads it (its loader is not pickle-free).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import nn

from kdforge.compress.stages import Artefact, Stage, StageContext, StageOptions, register

ONNX_FILE = "model.onnx"


class OnnxOptions(StageOptions):
    opset: int | None = Field(None, description="ONNX opset (default: the exporter's)")
    torch_export: bool = Field(False, description="also write model.pt2 (torch.export)")


@register("onnx", source="ONNX (onnx.ai) and ONNX Runtime")
class Onnx(Stage):
    """Export the float model to ONNX; check ONNX Runtime against PyTorch on the test split."""

    Options = OnnxOptions
    options: OnnxOptions

    def apply(self, model: nn.Module, ctx: StageContext, *, finetune: bool) -> nn.Module:
        return model

    def finish(self, model: nn.Module, ctx: StageContext, out: Path, *,
               previous: nn.Module) -> Artefact:
        from kdforge.compress.export import check_onnx, export_onnx, torch_export

        model = model.cpu().eval()
        path = export_onnx(model, ctx.example, out / ONNX_FILE, opset=self.options.opset)
        self.report = dict(check_onnx(path, model, ctx.test, threads=ctx.threads))
        if self.options.torch_export:
            exported = torch_export(model, ctx.example, out / "model.pt2")
            self.report["torch_export"] = exported.skipped or str(exported.path)
        return self._artefact(path, model, ctx)

    def load(self, out: Path, ctx: StageContext, *, previous: nn.Module) -> Artefact:
        return self._artefact(out / ONNX_FILE, previous, ctx)

    def _artefact(self, path: Path, model: nn.Module, ctx: StageContext) -> Artefact:
        from kdforge.compress.export import OnnxModule

        return Artefact(OnnxModule(path, threads=ctx.threads), model, [path])


__all__ = ["Onnx", "OnnxOptions"]
