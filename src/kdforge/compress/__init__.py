"""Compression with distillation: prune, quantize and export a trained model, each stage
fine-tuned by a distiller whose teacher is the original model (``kdforge compress``).

Stages register themselves in :data:`kdforge.compress.stages.STAGES` on import.
"""

from kdforge.compress.stages import STAGES, Artefact, Stage, StageContext

# isort: off
from kdforge.compress import stage_prune as stage_prune  # noqa: E402  (registers prune)
from kdforge.compress import stage_int8 as stage_int8  # noqa: E402  (registers int8)
from kdforge.compress import stage_onnx as stage_onnx  # noqa: E402  (registers onnx)
# isort: on

__all__ = ["STAGES", "Artefact", "Stage", "StageContext"]
