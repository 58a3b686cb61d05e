"""``transfer_set``: distillation on enlarged transfer sets versus the original inputs.

Stanton, Izmailov, Kirichenko, Alemi & Wilson, "Does Knowledge Distillation Really Work?",
NeurIPS 2021. The paper separates *fidelity* (how closely the student matches the teacher:
top-1 agreement and ``KL(p_T || p_S)``) from *generalisation* (test accuracy), measures
both on the training inputs and on the test set, and asks whether a larger transfer set
(augmented, mixed, synthetic samples) makes the student a more faithful copy, and whether a
more faithful copy generalises better. Its observations: students are far from matching the
teacher even on their own training inputs, enlarging the transfer set raises test fidelity
only modestly, and more fidelity does not always mean higher accuracy.

One student per transfer set, each distilled from the same frozen teacher with the run's
losses, at the same budget (optimizer steps grow with the set's size), each a stage of its
own (``NAME/SET/``, resumable):

- ``original``: the training inputs as they are;
- ``mixup`` / ``cutmix``: every batch mixed with its neighbour (Zhang et al. 2018 /
  Yun et al. 2019, one ``Beta(alpha, alpha)`` ratio per batch); teacher and student see the
  same mixed input (the ``function_matching`` view of Beyer et al. 2022, with no crop);
- ``synthesized``: the training inputs plus inputs synthesised from the teacher (the
  ``synthesized.safetensors`` files of ``deepinversion``);
- ``unlabelled``: the training inputs plus the inputs of another data set (``unlabelled``:
  a ``data`` section, e.g. MNIST-1D generated with another seed), their labels never read.

The losses must all learn from the teacher (no hard-label term): an added input has no
label. Extra inputs carry the teacher's top-1 class as their target, for completeness; no
loss reads it. Every record reports ``train_agreement`` / ``train_kl`` on the original
training inputs (un-augmented) and ``test_agreement`` / ``test_kl`` on the test set, with
``transfer_size``, the distinct inputs of the set (``None`` for on-the-fly mixing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from kdforge.config import RunConfig, StoreTeacherConfig
from kdforge.core.files import atomic_write, read_tensors
from kdforge.core.registry import Registry
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.data.loaders import load_batch
from kdforge.losses.base import LOSSES
from kdforge.schemes.base import (
    RunData,
    Runner,
    Scheme,
    SchemeOptions,
    StageResult,
    derive,
    evaluate_runs,
    record_of,
    register,
    require,
)

PAPER = "Stanton et al. 2021, Does Knowledge Distillation Really Work? (NeurIPS)"
STAGE = "transfer_set-stage"

#: ``set name -> builder(scheme, cfg, runner) -> stage changes`` (``derive`` keywords).
TRANSFER_SETS: Registry[Callable[..., dict[str, Any]]] = Registry("transfer set")


class TransferSetOptions(SchemeOptions):
    sets: list[str] = Field(default_factory=lambda: ["original", "mixup", "cutmix"],
                            min_length=1, description="transfer sets, one student each")
    alpha: float = Field(1.0, gt=0.0, description="Beta(alpha, alpha) of mixup / CutMix")
    view_options: dict[str, Any] = Field(
        default_factory=lambda: {"scale": [1.0, 1.0]},
        description="augmentation before mixing (default none: the whole input)")
    synthesized: list[str] = Field(default_factory=list, description="synthesised files "
                                   "(deepinversion's synthesized.safetensors) of 'synthesized'")
    unlabelled: dict[str, Any] | None = Field(None, description="a data section whose "
                                              "training inputs 'unlabelled' adds")
    extra_size: int | None = Field(None, gt=0, description="at most this many added inputs")
    budget: Literal["equal_steps", "equal_epochs"] = Field(
        "equal_steps", description="equal_steps: an enlarged set trains for proportionally "
        "fewer epochs, so every student takes as many optimizer steps; equal_epochs: the "
        "run's epochs for each (an enlarged set takes more steps)")


@register("transfer_set", paper=PAPER)
class TransferSet(Scheme):
    """Students distilled on the original and on enlarged transfer sets, side by side."""

    Options = TransferSetOptions
    options: TransferSetOptions
    sequence = True

    def check(self, cfg: RunConfig) -> None:
        o = self.options
        unknown = [s for s in o.sets if s not in TRANSFER_SETS]
        require(not unknown, f"transfer_set: unknown sets {unknown}; choose from "
                             f"{TRANSFER_SETS.names()}")
        require(len(set(o.sets)) == len(o.sets), f"transfer_set: sets {o.sets} repeat a name")
        require(len(cfg.teachers) == 1 and not isinstance(cfg.teachers[0], StoreTeacherConfig),
                "transfer_set labels every transfer set with one model teacher: give one "
                "'teacher' section, e.g. teacher: {run: runs/mnist1d-teacher}")
        labelled = [c.name for c in cfg.losses if not LOSSES.get(c.name).needs_teacher]
        require(bool(cfg.losses) and not labelled,
                f"transfer_set compares what the student learns from the teacher on each set, "
                f"and an added input has no label: remove the label losses {labelled} (e.g. "
                "losses: [{name: kd, T: 4}])" if labelled else
                "transfer_set distils with the run's losses: give one, e.g. [{name: kd, T: 4}]")
        require(cfg.view is None, "transfer_set sets each set's batches itself: remove 'view'")
        require("synthesized" not in o.sets or bool(o.synthesized),
                "transfer set 'synthesized' needs 'synthesized': the files deepinversion wrote "
                "(RUN/synthesis/synthesized.safetensors)")
        for path in o.synthesized:
            require(Path(path).is_file(), f"transfer_set: synthesised file {path!r} does not "
                                          "exist; run configs/schemes/deepinversion.yaml first")
        require("unlabelled" not in o.sets or o.unlabelled is not None,
                "transfer set 'unlabelled' needs 'unlabelled': a data section, e.g. "
                "{name: mnist1d, draw_seed: 7}")

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        self.check(cfg)
        data = runner.data(cfg)
        teacher = _teacher(cfg, data)
        records = []
        for name in self.options.sets:
            changes = TRANSFER_SETS.get(name)(self, cfg, runner)
            size = changes.pop("transfer_size")
            if size is not None and self.options.budget == "equal_steps":
                epochs = max(1, round(cfg.train.epochs * len(data.train) / size))
                changes["train"] = {**cfg.train.model_dump(mode="json", exclude_none=True),
                                    "epochs": epochs}
            result = runner.stage(derive(cfg, name, **changes))
            records.append(self._record(cfg, name, result, data, size, teacher))
        return records

    def _record(self, cfg: RunConfig, name: str, result: StageResult, data: RunData,
                size: int | None, teacher: nn.Module) -> dict[str, Any]:
        fit = {split: evaluate_runs([result.run_dir], dataset, num_classes=data.num_classes,
                                    device=cfg.train.device, teacher=teacher)
               for split, dataset in (("train", data.train), ("test", data.test))}
        return record_of(result, cfg.student.name, cfg.student.options, variant=name,
                         transfer_size=size,
                         train_accuracy=100.0 * fit["train"]["accuracy"],
                         train_agreement=100.0 * fit["train"]["agreement"],
                         test_agreement=100.0 * fit["test"]["agreement"],
                         train_kl=fit["train"]["kl"], test_kl=fit["test"]["kl"])


def _teacher(cfg: RunConfig, data: RunData) -> nn.Module:
    from kdforge import api

    teacher = api.build_teacher(cfg, data.num_classes, data.input_shape)
    model = teacher.model  # type: ignore[union-attr]
    model.eval()
    return model


# -- the transfer sets ---------------------------------------------------------------------------


@TRANSFER_SETS.register("original", source=PAPER)
def _original(scheme: TransferSet, cfg: RunConfig, runner: Runner) -> dict[str, Any]:
    return {"transfer_size": len(runner.data(cfg).train)}


def _mixing(mode: str) -> Callable[..., dict[str, Any]]:
    def changes(scheme: TransferSet, cfg: RunConfig, runner: Runner) -> dict[str, Any]:
        o = scheme.options
        return {"view": {"name": "function_matching", "mode": mode, "alpha": o.alpha,
                         **o.view_options}, "transfer_size": None}
    return changes


TRANSFER_SETS.register("mixup", source="Zhang et al. 2018, mixup (ICLR)")(_mixing("mixup"))
TRANSFER_SETS.register("cutmix", source="Yun et al. 2019, CutMix (ICCV)")(_mixing("cutmix"))


def _enlarged(cfg: RunConfig, runner: Runner, files: list[str]) -> dict[str, Any]:
    size = len(runner.data(cfg).train) + sum(len(read_tensors(f)["inputs"]) for f in files)
    return {"scheme": {"name": STAGE, "extra": files}, "transfer_size": size}


@TRANSFER_SETS.register("synthesized", source="Yin et al. 2020, DeepInversion (CVPR)")
def _synthesized(scheme: TransferSet, cfg: RunConfig, runner: Runner) -> dict[str, Any]:
    return _enlarged(cfg, runner, _capped(scheme, runner, list(scheme.options.synthesized)))


@TRANSFER_SETS.register("unlabelled", source=PAPER)
def _unlabelled(scheme: TransferSet, cfg: RunConfig, runner: Runner) -> dict[str, Any]:
    """The other data set's training inputs, labelled once by the teacher's top-1 class
    into ``ROOT/unlabelled.safetensors`` (their own labels are dropped unread)."""
    from kdforge.data.datasets import load_dataset

    path = runner.root / "unlabelled.safetensors"
    if not path.is_file():
        section = dict(scheme.options.unlabelled or {})
        name = section.pop("name", None)
        require(isinstance(name, str), "transfer_set: 'unlabelled' needs a data set 'name'")
        splits = load_dataset(name, **section)
        data = runner.data(cfg)
        require(tuple(splits.input_shape) == tuple(data.input_shape),
                f"transfer_set: the unlabelled inputs have shape {tuple(splits.input_shape)}, "
                f"the run's {tuple(data.input_shape)}; use a data set of the same inputs")
        inputs = load_batch(_normalized(cfg, splits.train), range(len(splits.train))).inputs
        _label(path, inputs, _teacher(cfg, data))
    return _enlarged(cfg, runner, _capped(scheme, runner, [str(path)]))


def _normalized(cfg: RunConfig, other):
    """The other data set's inputs normalised as the run's own (``data.normalize``: the
    given statistics, or with ``auto`` those of the run's training set)."""
    from kdforge.data.datasets import load_dataset
    from kdforge.data.datasets.normalized import NormalizedDataset, normalization_stats

    if cfg.data.normalize is None:
        return other
    own = load_dataset(cfg.data.name, **cfg.data.options).train
    mean, std = normalization_stats(cfg.data.normalize, own, cfg.data.name)
    return NormalizedDataset(other, mean, std)


def _label(path: Path, inputs: torch.Tensor, teacher: nn.Module) -> None:
    """Save ``inputs`` with the teacher's probabilities."""
    with torch.no_grad():
        probs = torch.cat([teacher(x).softmax(1) for x in inputs.split(512)])
    _save_set(path, inputs, probs)


def _save_set(path: Path, inputs: torch.Tensor, probs: torch.Tensor) -> None:
    """Inputs and the teacher's probabilities as one safetensors file, written atomically."""
    tensors = {"inputs": inputs.contiguous(), "teacher_probs": probs.contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _capped(scheme: TransferSet, runner: Runner, files: list[str]) -> list[str]:
    """``files``, or one file of their first ``extra_size`` inputs (under the root)."""
    cap = scheme.options.extra_size
    if cap is None:
        return files
    path = runner.root / f"extra-{Path(files[0]).stem}-{cap}.safetensors"
    if not path.is_file():
        sets = [read_tensors(f) for f in files]
        inputs = torch.cat([s["inputs"] for s in sets])[:cap]
        probs = torch.cat([s["teacher_probs"] for s in sets])[:cap]
        _save_set(path, inputs, probs)
    return [str(path)]


# -- the stage -----------------------------------------------------------------------------------


class EnlargedOptions(SchemeOptions):
    extra: list[str] = Field(min_length=1, description="files of inputs added to the set")


@register(STAGE, paper=PAPER)
class EnlargedStage(Scheme):
    """One student of ``transfer_set``: the training set plus the inputs of ``extra``."""

    Options = EnlargedOptions
    options: EnlargedOptions

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        sets = [read_tensors(p) for p in self.options.extra]
        train = data.train
        everything = load_batch(train, range(len(train)))  # type: ignore[arg-type]
        base, labels = everything.inputs, everything.targets
        extra = torch.cat([s["inputs"] for s in sets]).to(base.dtype)
        require(tuple(extra.shape[1:]) == tuple(base.shape[1:]),
                f"transfer_set: added inputs have shape {tuple(extra.shape[1:])}, the training "
                f"inputs {tuple(base.shape[1:])}")
        extra_labels = torch.cat([s["teacher_probs"] for s in sets]).argmax(1)
        classes = list(getattr(train, "classes", [])) or None
        enlarged = ArrayDataset(torch.cat([base, extra]), torch.cat([labels, extra_labels]),
                                classes)
        return data.with_sets(train=enlarged)


__all__ = ["TRANSFER_SETS", "EnlargedStage", "TransferSet", "TransferSetOptions"]
