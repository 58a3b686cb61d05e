"""The compression stages of ``kdforge compress``, one registered class each.

A stage turns the chain's current model into a compressed one in three steps, so that the
pipeline can fine-tune in between and resume after a crash:

1. :meth:`Stage.apply` -> the *trainable* compressed model (pruned weights with their masks,
   a fake-quantised module when a fine-tune follows), deterministic given its input model,
   so a resumed fine-tune rebuilds exactly the module its checkpoint belongs to;
2. (the pipeline fine-tunes it, or not: chain ``none``, or ``finetune: false``);
3. :meth:`Stage.finish` -> an :class:`Artefact`: the deployable model (masks made
   permanent, int8, an ONNX file), written into the stage's directory, plus the float
   model the next stage starts from. :meth:`Stage.load` reads a finished one back.

``previous`` is always the stage's input model (the chain's float model so far).

Nothing a stage writes needs unpickling to read: weights are safetensors, structure JSON,
graphs ONNX.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdforge.config import parse_section
from kdforge.core.errors import CheckpointError
from kdforge.core.registry import Registry

STAGES: Registry[type[Stage]] = Registry("compression stage")
STAGE_FILE = "stage.json"


@dataclass
class StageContext:
    """What a stage may use: an example batch (CPU), calibration batches from the training
    set, the model's description (``name``, ``options``, classes, input shape), the seed,
    the CPU threads of the measures and the test split (an export's check)."""

    example: torch.Tensor
    calibration: list[torch.Tensor]
    description: dict[str, Any]
    seed: int = 0
    threads: int = 1
    test: Any = None  # the test split: an export's check compares runtimes on it (no choice)


@dataclass
class Artefact:
    """A finished stage: the module that is measured (CPU, eval), the float module the next
    stage compresses further, the files on disk, and facts for the report."""

    module: nn.Module
    float_module: nn.Module
    files: list[Path]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


class StageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage:
    """Base of the registered stages; ``self.options`` holds the validated options."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[StageOptions]] = StageOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = parse_section(self.Options, dict(options or {}),
                                     f"compression stage {self.name!r}")

    def apply(self, model: nn.Module, ctx: StageContext, *, finetune: bool) -> nn.Module:
        """The compressed model, trainable when ``finetune`` (a fine-tune follows);
        ``model`` is a private copy: change it freely."""
        raise NotImplementedError

    def finish(self, model: nn.Module, ctx: StageContext, out: Path, *,
               previous: nn.Module) -> Artefact:
        """Make ``model`` (applied, perhaps fine-tuned) deployable and write it to ``out``."""
        raise NotImplementedError

    def load(self, out: Path, ctx: StageContext, *, previous: nn.Module) -> Artefact:
        """Read back what :meth:`finish` wrote."""
        raise NotImplementedError


def build_stage(name: str, options: dict[str, Any]) -> Stage:
    return STAGES.get(name)(options)


def register(name: str, *, source: str):
    return STAGES.register_named(name, source=source)


def write_stage_facts(out: Path, facts: dict[str, Any]) -> None:
    from kdforge.core.files import write_json

    write_json(out / STAGE_FILE, facts)


def read_stage_facts(out: Path) -> dict[str, Any] | None:
    path = out / STAGE_FILE
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"the stage record {str(path)!r} cannot be read ({exc}); delete "
                              "it to run the stage again, or rerun with --overwrite") from None
    if not isinstance(facts, dict):
        raise CheckpointError(f"the stage record {str(path)!r} holds a "
                              f"{type(facts).__name__}, not a mapping; delete it to run the "
                              "stage again")
    return facts


__all__ = ["STAGES", "Artefact", "Stage", "StageContext", "StageOptions", "build_stage",
           "read_stage_facts", "register", "write_stage_facts"]
