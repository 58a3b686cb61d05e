"""Initialise a model from another run's trained weights where names and shapes match.

Schemes start networks from a trained one: Hinton et al.'s specialists start from the
generalist (2015, sec. 5.1), learning without forgetting grows the old model's classifier
by the new task's classes (Li & Hoiem 2016). Tensors are read from the run's safetensors
file (no pickle); a tensor whose shape differs only in its first dimension (a classifier
with more or fewer classes) gets the overlapping rows, the rest keep their fresh values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdforge.core.errors import CheckpointError
from kdforge.core.files import read_tensors
from kdforge.models.runs import WEIGHTS, read_model_description


@dataclass
class InitReport:
    """What :func:`init_from_run` did, tensor by tensor."""

    copied: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)      # first rows copied (grown/shrunk head)
    skipped: list[str] = field(default_factory=list)   # absent or of another shape


def init_from_run(model: nn.Module, run_dir: str | os.PathLike) -> InitReport:
    """Copy the trained weights of ``run_dir`` into ``model`` where they fit (in place).

    Raises:
        CheckpointError: ``run_dir`` holds no trained model, or more than half of the
            model's tensors find nothing that fits (another architecture).
    """
    read_model_description(run_dir)  # a clear error if this is not a finished run
    source = read_tensors(Path(run_dir) / WEIGHTS)
    report = InitReport()
    state = model.state_dict()
    with torch.no_grad():
        for name, target in state.items():
            value = source.get(name)
            if value is None or value.ndim != target.ndim:
                report.skipped.append(name)
            elif value.shape == target.shape:
                target.copy_(value)
                report.copied.append(name)
            elif value.ndim >= 1 and value.shape[1:] == target.shape[1:]:
                n = min(value.shape[0], target.shape[0])
                target[:n].copy_(value[:n])
                report.rows.append(name)
            else:
                report.skipped.append(name)
    if len(report.skipped) > len(state) // 2:
        raise CheckpointError(
            f"no weight of run {str(run_dir)!r} fits most of this model ({len(report.skipped)} "
            f"of {len(state)} tensors differ in name or shape, e.g. "
            f"{', '.join(report.skipped[:3])}); 'init' starts a model from a run of the "
            "same architecture")
    return report


__all__ = ["InitReport", "init_from_run"]
