"""The ``prune`` stage: magnitude pruning, unstructured (masks) or structured (channels).

``method: structured`` removes whole channels through torch-pruning's dependency graph
(Fang et al. 2023, DepGraph; L1 filter importance, Li et al. 2017) until the parameters
are at most ``params_ratio`` of the input's or its measured CPU latency is under
``latency_ms``; channel counts are rounded to multiples of ``round_to``. The pruned network
is smaller and faster. ``method: unstructured`` zeroes the ``amount`` smallest weights
globally (Han et al. 2015); the masks are kept through the fine-tune and made permanent at
the end. Unstructured sparsity does not speed up dense kernels: parameters, file size and
latency stay those of the dense model (see :mod:`kdforge.compress.prune`).

The result is a run directory (``model.json`` + ``model.safetensors``): it loads with
:func:`kdforge.models.runs.load_run_model` and can teach, be evaluated or compressed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from kdforge.compress.stages import Artefact, Stage, StageContext, StageOptions, register
from kdforge.engine.checkpoint import save_weights
from kdforge.models.runs import WEIGHTS, load_run_model, save_run_model

PAPERS = ("Han et al. 2015, Learning both Weights and Connections (NeurIPS); "
          "Fang et al. 2023, DepGraph: Towards Any Structural Pruning (CVPR)")


class PruneOptions(StageOptions):
    method: Literal["structured", "unstructured"] = "structured"
    params_ratio: float | None = Field(None, gt=0.0, le=1.0, description="structured: "
                                       "keep at most this share of the parameters")
    latency_ms: float | None = Field(None, gt=0.0, description="structured: CPU latency "
                                     "budget at latency_batch")
    latency_batch: int = Field(1, gt=0)
    round_to: int = Field(8, gt=0, description="structured: channel counts a multiple of it")
    steps: int = Field(5, gt=0, description="structured: pruning steps")
    amount: float | None = Field(None, gt=0.0, lt=1.0, description="unstructured: share of "
                                 "weights zeroed")

    @model_validator(mode="after")
    def _target(self) -> PruneOptions:
        if self.method == "structured" and self.params_ratio is None and self.latency_ms is None:
            raise ValueError("structured pruning needs a target: params_ratio (e.g. 0.5) "
                             "or latency_ms")
        if self.method == "unstructured" and self.amount is None:
            raise ValueError("unstructured pruning needs 'amount' (e.g. 0.8: zero 80% of "
                             "the weights)")
        return self


@register("prune", source=PAPERS)
class Prune(Stage):
    """Magnitude pruning, structured (channels, really smaller) or unstructured (masks)."""

    Options = PruneOptions
    options: PruneOptions

    def apply(self, model: nn.Module, ctx: StageContext, *, finetune: bool) -> nn.Module:
        from kdforge.compress import prune

        o = self.options
        if o.method == "structured":
            self.report = prune.prune_structured(
                model, ctx.example, params_ratio=o.params_ratio, latency_ms=o.latency_ms,
                latency_batch=o.latency_batch, round_to=o.round_to, steps=o.steps)
        else:
            self.report = prune.prune_unstructured(model, o.amount)
        return model

    def finish(self, model: nn.Module, ctx: StageContext, out: Path, *,
               previous: nn.Module) -> Artefact:
        from kdforge.compress import prune

        if self.options.method == "unstructured":
            prune.make_permanent(model)
        model = model.cpu().eval()
        out.mkdir(parents=True, exist_ok=True)
        save_weights(model, out / WEIGHTS)
        d = ctx.description
        save_run_model(out, model, name=d["name"], options=d.get("options", {}),
                       num_classes=d["num_classes"], input_shape=tuple(d["input_shape"]))
        return self.load(out, ctx, previous=previous)

    def load(self, out: Path, ctx: StageContext, *, previous: nn.Module) -> Artefact:
        from kdforge.compress.prune import sparsity

        model = load_run_model(out).eval()
        facts = {"method": self.options.method, "sparsity": sparsity(model)}
        return Artefact(model, model, [out / WEIGHTS, out / "model.json"], facts)


__all__ = ["Prune", "PruneOptions"]
