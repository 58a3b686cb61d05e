"""``deepinversion``: data-free distillation on inputs synthesised from the teacher alone.

Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha & Kautz, "Dreaming to Distill: Data-free
Knowledge Transfer via DeepInversion", CVPR 2020. Batches of inputs ``x`` with balanced
target labels ``y`` are drawn from noise and optimised with Adam, the teacher frozen (eval
mode: its BatchNorm running statistics are read, never updated), to minimise

    CE(T(x), y) + a_tv R_TV(x) + a_l2 ||x||^2
        + a_f sum_l (||mu_l(x) - mu_l^BN||_2 + ||sigma^2_l(x) - sigma^2_l^BN||_2)
        [+ a_c (1 - JS(p_T(x), p_S(x)))]                       (Adaptive DeepInversion)

(the terms are in :mod:`kdforge.schemes.inversion_losses`). The synthesised set (inputs,
target labels, the teacher's probabilities) is saved as ``synthesis/synthesized.safetensors``
under the run and is the *transfer set* the student is then distilled on with the run's
``losses`` (e.g. KD), the teacher teaching on it; the run's training set is never read
(``training_inputs_read: 0``). The same file can be labelled into a soft-label store
(``kdforge soft-labels`` over an ``ArrayDataset`` of it) to distil from stored labels.

A sequence: ``synthesis`` (each finished batch saved, so an interrupted synthesis redoes
only the unfinished batch), then the ``student`` stage (a resumable run). With
``competition: true`` (ADI) the competitor is ``warm_start`` (a student run) or, without
one, a warm-up student distilled on the first half of the batches; the second half is then
synthesised to make teacher and warm student disagree, and the final student (initialised
from the warm one) learns on all of them. ``report.png`` shows the synthesised inputs and
the histogram of the teacher's predictions on them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file
from torch import Tensor, nn

from kdforge.config import RunConfig
from kdforge.core.errors import ConfigError
from kdforge.core.files import atomic_write, read_tensors, write_text
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.schemes.base import (
    RunData,
    Runner,
    Scheme,
    SchemeOptions,
    TrainingInputsForbidden,
    derive,
    record_of,
    register,
    require,
)
from kdforge.schemes.inversion_losses import (
    BNStatistics,
    batchnorm_layers,
    competition,
    l2_prior,
    total_variation,
)

PAPER = "Yin et al. 2020, Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion (CVPR)"
SYNTHESIZED = "synthesized.safetensors"


class DeepInversionOptions(SchemeOptions):
    batches: int = Field(8, ge=1, description="synthesised batches")
    batch_size: int = Field(100, ge=1, description="inputs per batch (labels cycle classes)")
    iterations: int = Field(200, ge=1, description="Adam steps per batch")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the inputs")
    alpha_tv: float = Field(1e-2, ge=0, description="weight of R_TV")
    alpha_l2: float = Field(1e-4, ge=0, description="weight of ||x||^2")
    alpha_f: float = Field(1.0, ge=0, description="weight of the BN statistics term")
    alpha_c: float = Field(1.0, ge=0, description="weight of the competition term (ADI)")
    competition: bool = Field(False, description="Adaptive DeepInversion (needs a student)")
    warm_start: str | None = Field(None, description="run dir of the ADI competitor student")
    clamp: tuple[float, float] | None = Field(None, description="keep inputs in [lo, hi]")


def synthesize_batch(teacher: nn.Module, targets: Tensor, shape: tuple[int, ...],
                     opts: DeepInversionOptions, *, generator: torch.Generator,
                     student: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
    """One batch of inputs optimised for ``targets`` (the teacher and ``student`` frozen,
    in eval mode); returns them and the final loss terms."""
    x = torch.randn((len(targets), *shape), generator=generator).requires_grad_(True)
    optim = torch.optim.Adam([x], lr=opts.lr)
    stats = BNStatistics(teacher)
    parts: dict[str, Tensor] = {}
    for _ in range(opts.iterations):
        optim.zero_grad(set_to_none=True)
        with stats:
            logits = teacher(x)
        parts = {"ce": F.cross_entropy(logits, targets), "tv": total_variation(x),
                 "l2": l2_prior(x), "feature": stats.loss}
        loss = (parts["ce"] + opts.alpha_tv * parts["tv"] + opts.alpha_l2 * parts["l2"]
                + opts.alpha_f * parts["feature"])
        if student is not None:
            parts["compete"] = competition(logits, student(x))
            loss = loss + opts.alpha_c * parts["compete"]
        loss.backward()
        optim.step()
        if opts.clamp is not None:
            with torch.no_grad():
                x.clamp_(*opts.clamp)
    return x.detach(), {k: float(v.detach()) for k, v in parts.items()}


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def synthesize(out: Path, teacher: nn.Module, opts: DeepInversionOptions, *, num_classes: int,
               shape: tuple[int, ...], seed: int, first: int, count: int,
               student: nn.Module | None = None) -> Path:
    """Synthesise batches ``first .. first + count - 1`` into ``out`` (one file per batch,
    a finished one is kept), then the set ``out/synthesized.safetensors``; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {**opts.model_dump(mode="json"), "seed": seed, "first": first, "count": count}
    written = out / "synthesis.json"
    if written.is_file() and json.loads(written.read_text()) != settings:
        raise ConfigError(f"{str(out)!r} holds a synthesis of other settings; rerun with "
                          "--overwrite or choose another name (--set name=...)")
    write_text(written, json.dumps(settings, indent=1))  # atomic: a kill leaves no torn file
    final = out / SYNTHESIZED
    if final.is_file():
        return final
    teacher, student = _frozen(teacher), None if student is None else _frozen(student)
    start = time.perf_counter()
    inputs, labels = [], []
    for b in range(first, first + count):
        path = out / f"batch-{b:03d}.safetensors"
        if not path.is_file():
            targets = torch.arange(opts.batch_size) % num_classes
            generator = torch.Generator().manual_seed(seed * 100_003 + b)
            x, _ = synthesize_batch(teacher, targets, shape, opts, generator=generator,
                                    student=student)
            batch = {"inputs": x.contiguous(), "targets": targets}
            atomic_write(path, lambda tmp, batch=batch: save_file(batch, tmp))
        saved = read_tensors(path)
        inputs.append(saved["inputs"])
        labels.append(saved["targets"])
    x = torch.cat(inputs)
    with torch.no_grad():
        probs = teacher(x).softmax(1)
    tensors = {"inputs": x, "targets": torch.cat(labels), "teacher_probs": probs,
               "seconds": torch.tensor(time.perf_counter() - start, dtype=torch.float64)}
    atomic_write(final, lambda tmp: save_file(tensors, tmp))
    write_report(out / "report.png", x, probs)
    return final


def write_report(path: Path, inputs: Tensor, probs: Tensor, shown: int = 40) -> None:
    """A PNG: a grid of the first synthesised inputs (images; 1-D signals as curves), each
    titled with the teacher's prediction, and the histogram of the teacher's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred, k = probs.argmax(1), probs.shape[1]
    n, cols = min(shown, len(inputs)), 10
    rows = -(-n // cols)
    fig = plt.figure(figsize=(cols * 1.1, rows * 1.2 + 2.6))
    grid = fig.add_gridspec(rows + 2, cols)
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        x = inputs[i].float()
        if x.ndim == 3:
            ax.imshow((x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1)).numpy(),
                      cmap="gray")
        else:
            ax.plot(x.flatten().numpy(), lw=0.8)
        ax.set_title(f"T: {int(pred[i])}", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[rows:, :])
    ax.bar(range(k), torch.bincount(pred, minlength=k).numpy())
    ax.set_xticks(range(k))
    ax.set_xlabel("teacher's prediction on the synthesised inputs")
    ax.set_ylabel("inputs")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_transfer_set(paths: list[str], classes: list[str] | None = None) -> ArrayDataset:
    """The synthesised files as one labelled data set (labels: the teacher's argmax)."""
    sets = [read_tensors(p) for p in paths]
    inputs = torch.cat([s["inputs"] for s in sets])
    targets = torch.cat([s["teacher_probs"] for s in sets]).argmax(1)
    return ArrayDataset(inputs, targets, classes or None)


def synthesis_seconds(paths: list[str]) -> float:
    return sum(float(read_tensors(p)["seconds"]) for p in paths)


class TransferOptions(SchemeOptions):
    sets: list[str] = Field(min_length=1, description="synthesised files to train on")


@register("deepinversion-transfer", paper=PAPER)
class TransferStage(Scheme):
    """One student stage of ``deepinversion``: trains on the synthesised sets instead of
    the training set (which is replaced by :class:`TrainingInputsForbidden`; no
    validation set, it would be carved from the training set)."""

    Options = TransferOptions

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        forbidden = TrainingInputsForbidden(data.train, "deepinversion")
        return data.with_sets(train=load_transfer_set(self.options.sets, forbidden.classes),
                              val=None)


def _teacher_model(cfg: RunConfig, data: RunData) -> nn.Module:
    from kdforge import api

    teacher = api.build_teacher(cfg, data.num_classes, data.input_shape)
    require(teacher is not None, "deepinversion synthesises inputs from a teacher; give a "
                                 "'teacher' section, e.g. teacher: {run: runs/digits-teacher}")
    require(len(cfg.teachers) == 1, "deepinversion inverts one teacher; give one 'teacher'")
    return teacher.model  # type: ignore[union-attr]


@register("deepinversion", paper=PAPER)
class DeepInversion(Scheme):
    """Synthesise a transfer set from the teacher's BatchNorm statistics, then distil."""

    Options = DeepInversionOptions
    sequence = True

    def check(self, cfg: RunConfig) -> None:
        from kdforge import api

        o = self.options
        require(not (o.warm_start and not o.competition),
                "deepinversion: 'warm_start' is the competitor of Adaptive DeepInversion; "
                "set competition: true or remove warm_start")
        require(not o.competition or o.warm_start is not None or o.batches >= 2,
                "deepinversion: competition without warm_start warms a student up on half "
                "the batches; give batches >= 2 or a warm_start run")
        require(bool(cfg.losses), "deepinversion distils the student on the synthesised set: "
                                  "give 'losses', e.g. [{name: kd, T: 4}]")
        if o.warm_start is not None:
            require((Path(o.warm_start) / "model.json").is_file(),
                    f"deepinversion: warm_start {o.warm_start!r} is not a finished run "
                    "directory (no model.json); train the competitor first")
        data = api.build_data(cfg)
        model = _teacher_model(cfg, data)
        require(bool(batchnorm_layers(model)),
                "deepinversion matches the batch statistics of synthesised inputs to the "
                "teacher's BatchNorm running statistics, and this teacher has no BatchNorm "
                "layer; use a teacher with BatchNorm (e.g. resnet8) or another data-free "
                "scheme")

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        from kdforge.models.runs import load_run_model

        self.check(cfg)
        o = self.options
        data = runner.data(cfg)
        data = data.with_sets(train=TrainingInputsForbidden(data.train, self.name), val=None)
        teacher = _teacher_model(cfg, data)
        k, shape = data.num_classes, tuple(data.input_shape)
        root = runner.root

        def synth(name: str, first: int, count: int, student: nn.Module | None) -> str:
            return str(synthesize(root / name, teacher, o, num_classes=k, shape=shape,
                                  seed=cfg.seed, first=first, count=count, student=student))

        def student(name: str, sets: list[str], init: str | None = None):
            spec = cfg.student.model_dump(mode="json", exclude_none=True)
            if init is not None:
                spec["init"] = init
            return runner.stage(derive(cfg, name, student=spec, scheme={
                "name": "deepinversion-transfer", "sets": sets}))

        seconds = 0.0
        if not o.competition:
            sets = [synth("synthesis", 0, o.batches, None)]
            result = student("student", sets)
        else:
            sets, warm = [], o.warm_start
            if warm is None:
                half = o.batches // 2
                sets.append(synth("synthesis-warm", 0, half, None))
                first = student("warm", list(sets))
                seconds += first.summary["train_time_s"]
                warm = str(first.run_dir)
            else:
                half = 0
            competitor = load_run_model(warm)
            sets.append(synth("synthesis", half, o.batches - half, competitor))
            result = student("student", sets, init=warm)
        seconds += result.summary["train_time_s"]
        record = record_of(result, cfg.student.name, cfg.student.options,
                           variant="competition" if o.competition else None,
                           training_inputs_read=0, synthesized=o.batches * o.batch_size,
                           synthesis_seconds=synthesis_seconds(sets))
        record["train_seconds"] = seconds + record["synthesis_seconds"]
        return [record]


__all__ = ["DeepInversion", "DeepInversionOptions", "TransferStage", "load_transfer_set",
           "synthesize", "synthesize_batch"]
