"""Per-sample test predictions of a finished run: ``predictions.safetensors``.

``summary.json`` holds aggregate test metrics only; the report's reliability diagrams
(Guo et al. 2017, "On Calibration of Modern Neural Networks") and its confusion of
teacher-student disagreements need every test sample. At the end of a run
:func:`write_predictions` stores, in the run directory:

- ``student``: the evaluated module's logits ``(N, K)``, float16;
- ``teacher``: the logits ``(N, K)`` of the run's evaluation teacher (the teacher fidelity
  is measured against), float16, when the run has one;
- ``targets``: the labels ``(N,)``, int64;

and as metadata ``num_samples`` (N), ``num_samples_total`` (the test set's size) and the
class names when the data set has them. At most :data:`MAX_SAMPLES` samples are kept (the
first ones, in the test set's order): 10,000 samples of 1,000 classes are 40 MB. Logits
that are not ``(B, K)`` (token sequences) and labels that are not class indices are not
stored. The file is written atomically by the main process only; under ``torchrun`` that
process runs the whole test set alone (a second, unsharded pass; the test metrics in
``summary.json`` stay the sharded, reduced ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdforge.core.files import atomic_write
from kdforge.data.loaders import eval_loader
from kdforge.engine.metrics import forward_pass

PREDICTIONS = "predictions.safetensors"
#: at most this many test samples are stored (the first ones)
MAX_SAMPLES = 10_000


@torch.no_grad()
def collect_predictions(student: nn.Module, dataset: Dataset, *,
                        teacher: nn.Module | None = None, device: torch.device | str = "cpu",
                        batch_size: int = 512, autocast_dtype: torch.dtype | None = None,
                        max_samples: int = MAX_SAMPLES) -> dict[str, Tensor] | None:
    """``{"student", "teacher"?, "targets"}`` on the first ``max_samples`` samples of
    ``dataset``, or ``None`` when the logits are not ``(B, K)`` or the labels not classes."""
    parts: dict[str, list[Tensor]] = {"student": [], "teacher": [], "targets": []}
    seen = 0
    passes = forward_pass(student, eval_loader(dataset, batch_size), teacher=teacher,
                          device=device, autocast_dtype=autocast_dtype)
    for batch, s, t in passes:
        y = batch.targets
        if y is None or y.dtype != torch.long or y.ndim != 1 or s.ndim != 2:
            passes.close()  # restores the student's mode
            return None
        take = min(batch.size, max_samples - seen)
        parts["student"].append(s[:take].float().cpu())
        parts["targets"].append(y[:take].cpu())
        if t is not None:
            parts["teacher"].append(t[:take].float().cpu())
        seen += take
        if seen >= max_samples:
            passes.close()
            break
    if not parts["student"]:
        return None
    out = {"student": torch.cat(parts["student"]).half(),
           "targets": torch.cat(parts["targets"]).long()}
    if parts["teacher"]:
        out["teacher"] = torch.cat(parts["teacher"]).half()
    return out


def save_predictions(path: str | os.PathLike, predictions: dict[str, Tensor],
                     metadata: dict[str, Any] | None = None) -> Path:
    """Write ``predictions`` (contiguous CPU tensors) atomically as safetensors; metadata
    values are stored as JSON strings."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in predictions.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def write_predictions(trainer: Any, dataset: Dataset, run_dir: str | os.PathLike,
                      max_samples: int = MAX_SAMPLES) -> Path | None:
    """Collect the test predictions of ``trainer``'s evaluated module (and of its
    evaluation teacher) and write ``run_dir/predictions.safetensors``; main process only.
    Returns the path, or ``None`` when nothing was written."""
    if not trainer.env.is_main:
        return None
    preds = collect_predictions(trainer.train_step.eval_module(), dataset,
                                teacher=trainer.eval_teacher, device=trainer.device,
                                batch_size=trainer.eval_batch_size,
                                autocast_dtype=trainer.autocast_dtype, max_samples=max_samples)
    if preds is None:
        return None
    meta: dict[str, Any] = {"num_samples": int(preds["targets"].numel()),
                            "num_samples_total": len(dataset)}  # type: ignore[arg-type]
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) == preds["student"].shape[1]:
        meta["classes"] = [str(c) for c in classes]
    return save_predictions(Path(run_dir) / PREDICTIONS, preds, meta)


__all__ = ["MAX_SAMPLES", "PREDICTIONS", "collect_predictions", "save_predictions",
           "write_predictions"]
