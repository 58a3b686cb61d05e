"""``lwf``: learning without forgetting, a network learns a new task and keeps the old one.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017. A network with shared
parameters θ_s and the head θ_o of an old task A learns a new task B with a new head θ_n,
without task A's data. Before training, the old network's responses to every training
sample of task B are recorded once, Y_o = CNN(X_n; θ_s, θ_o), and never change; then all of
θ_s, θ_o, θ_n are trained to

    minimise  λ_o L_old(Y_o, Ŷ_o) + L_new(Y_n, Ŷ_n) + R(θ_s, θ_o, θ_n)

with L_new the cross-entropy of the new head's softmax with task B's labels, R the weight
decay (the run's optimizer) and L_old the distillation cross-entropy at temperature T

    L_old = -1/B sum_b sum_i y'_o^(i) log ŷ'_o^(i),   y'_o = softmax(z_o / T)  (recorded),
                                                       ŷ'_o = softmax(ẑ_o / T)  (old head now)

(the paper writes y'^(i) = (y^(i))^(1/T) / sum_j (y^(j))^(1/T) of probabilities, the same
thing; it uses T = 2 and λ_o = 1, and no T^2 factor). Its warm-up step (θ_s and θ_o frozen,
θ_n trained alone) is ``warmup_epochs``; its fine-tuning baseline trains θ_s and θ_n on
L_new alone with θ_o fixed.

The two heads are the two slices of one grown classifier: a task-B model has K_A + K_B
outputs, rows 0..K_A-1 the task-A model's (copied by ``student.init``), the rest new; task
B's labels are offset by K_A. Both heads are task-aware: a task is scored by the argmax over
its own slice. ``lwf`` runs the experiment as stages (``NAME/task-a``, ``NAME/warmup``,
``NAME/lwf``, ``NAME/finetune``), each resumable; ``lwf-stage`` is one task-B stage (a run
with ``data.classes`` = task B, ``student.init`` = the task-A run or its warm-up run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdforge.config import RunConfig
from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.files import read_tensors
from kdforge.core.outputs import Batch, Outputs, StepResult, to_outputs
from kdforge.core.step import OptimGroup, StepContext, TrainStep
from kdforge.data.datasets import load_dataset, normalize_splits
from kdforge.data.datasets.classes import RelabelledDataset, select_classes
from kdforge.models.runs import WEIGHTS, load_run_model, read_model_description
from kdforge.schemes.base import (
    RunData,
    Runner,
    Scheme,
    SchemeOptions,
    StageResult,
    StepInputs,
    derive,
    evaluate_on,
    register,
    require,
)

PAPER = "Li & Hoiem 2016, Learning without Forgetting (ECCV; TPAMI 2017)"


def lwf_losses(logits: Tensor, recorded: Tensor | None, targets: Tensor, k_old: int, *,
               T: float = 2.0) -> tuple[Tensor | None, Tensor]:
    """``(L_old, L_new)`` for logits ``(B, K_A + K_B)``: the old slice against the recorded
    logits ``(B, K_A)`` (``None``: no L_old) and the new slice against task-B labels
    ``targets`` in ``K_A..K_A+K_B-1``; both batch means (see the module docstring)."""
    old, new = logits[:, :k_old].float(), logits[:, k_old:].float()
    loss_new = F.cross_entropy(new, targets - k_old)
    if recorded is None:
        return None, loss_new
    q = F.softmax(recorded.float() / T, dim=-1)
    loss_old = -(q * F.log_softmax(old / T, dim=-1)).sum(-1).mean()
    return loss_old, loss_new


@dataclass(frozen=True)
class Mode:
    """What a task-B stage trains: ``distill`` adds λ_o L_old on the recorded responses;
    ``old_head_fixed`` holds θ_o at the task-A values; ``body_fixed`` freezes θ_s as well
    (the warm-up: θ_n alone, the body in eval mode)."""

    distill: bool
    old_head_fixed: bool
    body_fixed: bool


MODES = {"lwf": Mode(True, False, False), "finetune": Mode(False, True, False),
         "warmup": Mode(False, True, True)}


class RecordedResponses(nn.Module):
    """The old model's logits for every training sample, by ``batch.index`` (checkpointed)."""

    def __init__(self, num_samples: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.zeros(num_samples, num_classes))


class FrozenRows:
    """Holds the first rows of some of ``model``'s tensors at fixed values: they are written
    back before every forward pass and every ``state_dict`` (checkpoints, saved weights), so
    what the optimizer does to them (weight decay, momentum) reaches no prediction or file."""

    def __init__(self, model: nn.Module, rows: dict[str, Tensor]) -> None:
        self.model = [model]  # a list: not a submodule of anything
        self.rows = {name: value.detach().clone() for name, value in rows.items()}
        self.handles = [model.register_forward_pre_hook(lambda m, args: self.restore()),
                        model.register_state_dict_pre_hook(lambda m, p, k: self.restore())]

    @torch.no_grad()
    def restore(self) -> None:
        model = self.model[0]
        for name, value in self.rows.items():
            try:
                target = model.get_parameter(name)
            except AttributeError:
                target = model.get_buffer(name)
            if value.device != target.device:
                value = self.rows[name] = value.to(target.device)
            target[: value.shape[0]].copy_(value)


class HeadSlice(nn.Module):
    """The logits of ``model`` in columns ``start:stop``: one task's head."""

    def __init__(self, model: nn.Module, start: int, stop: int | None = None) -> None:
        super().__init__()
        self.model, self.start, self.stop = model, start, stop

    def forward(self, x: Tensor) -> Tensor:
        return to_outputs(self.model(x)).logits[:, self.start:self.stop]


def grown_rows(model: nn.Module, old: dict[str, Tensor], k_old: int,
               k_total: int) -> dict[str, Tensor]:
    """The task-A values of the tensors that grow from ``k_old`` to ``k_total`` rows (the
    classifier), by name."""
    rows = {}
    for name, value in model.state_dict().items():
        before = old.get(name)
        if (before is not None and before.ndim == value.ndim >= 1 and before.shape[0] == k_old
                and value.shape[0] == k_total and before.shape[1:] == value.shape[1:]):
            rows[name] = before
    require(bool(rows), f"found no classifier that grows from the task-A model's {k_old} "
            f"outputs to {k_total}; lwf needs the same architecture for both tasks")
    return rows


class LwfStep(TrainStep):
    """One task-B stage: ``student`` (K_A + K_B outputs) trained on the new head's CE, plus
    λ_o L_old against the responses ``old`` gives before training (``mode`` in :data:`MODES`).

    Args:
        student: the grown model, initialised from the task-A run (or its warm-up).
        old: the task-A model (K_A outputs); it only records, in :meth:`prepare`.
        old_rows: the task-A values of the grown tensors (:func:`grown_rows`).
        num_samples: training samples (the recorded buffer's length).
    """

    def __init__(self, student: nn.Module, old: nn.Module, old_rows: dict[str, Tensor], *,
                 num_samples: int, mode: Mode, lambda_old: float = 1.0, T: float = 2.0) -> None:
        super().__init__()
        self.student, self.mode = student, mode
        self._old = [old.eval().requires_grad_(False)]  # a list: not trained, not saved
        self.k_old = int(next(iter(old_rows.values())).shape[0])
        self.lambda_old, self.T = float(lambda_old), float(T)
        self.recorded = RecordedResponses(num_samples, self.k_old) if mode.distill else None
        self.ready = False
        self.frozen = FrozenRows(student, old_rows) if mode.old_head_fixed else None
        if mode.body_fixed:
            for name, p in student.named_parameters():
                p.requires_grad_(name in old_rows)

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def state_modules(self) -> dict[str, nn.Module]:
        extra = {"recorded": self.recorded} if self.recorded is not None else {}
        return {"student": self.student, **extra}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("student", list(self.student.parameters()))]

    def synced_buffers(self) -> list[str]:
        return ["recorded.logits"] if self.recorded is not None else []

    def train(self, mode: bool = True) -> LwfStep:
        super().train(mode)
        if self.mode.body_fixed:
            self.student.eval()  # θ_s frozen: no BatchNorm statistics move either
        return self

    @torch.no_grad()
    def prepare(self, batch: Batch, context: StepContext | None = None) -> None:
        was = self.training
        self.eval()
        try:
            k = to_outputs(self.student(batch.inputs)).logits.shape[-1]
        finally:
            self.train(was)
        if k <= self.k_old:
            raise ShapeMismatchError(f"the model predicts {k} classes, the old task alone has "
                                     f"{self.k_old}; build it with K_A + K_B outputs")
        if self.recorded is None:
            return
        if context is None or context.ordered_batches is None:
            raise ConfigError("LwF records the old model's responses over the whole training "
                              "set before training: run it through the trainer")
        if context.pretrain:
            self.record(context.ordered_batches)
        self.ready = True  # on resume the checkpoint restores the recorded responses

    @torch.no_grad()
    def record(self, batches) -> None:
        """Y_o: the old model's logits for every training sample, once."""
        assert self.recorded is not None
        old, store = self._old[0], self.recorded.logits
        seen = torch.zeros(store.shape[0], dtype=torch.bool, device=store.device)
        old.to(store.device)
        for b in batches():
            if b.index is None:
                raise ConfigError("LwF keeps a response per training sample: the data set "
                                  "must give each sample's index")
            index = b.index.to(store.device)
            store[index] = to_outputs(old(b.inputs)).logits.float().to(store.device)
            seen[index] = True
        if not bool(seen.all()):
            raise ConfigError("the ordered pass over the training set missed samples; LwF "
                              "needs every sample's response before training")

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        if self.recorded is not None and not self.ready:
            raise ConfigError("call prepare(batch, context) first: LwF records the old "
                              "model's responses before training")
        if batch.targets is None or (batch.index is None and self.recorded is not None):
            raise ConfigError("an LwF step needs each batch's labels and sample indices")
        logits = to_outputs(self.student(batch.inputs)).logits
        recorded = self.recorded.logits[batch.index] if self.recorded is not None else None
        loss_old, loss_new = lwf_losses(logits, recorded, batch.targets, self.k_old, T=self.T)
        parts = {"new": loss_new}
        if loss_old is not None:
            parts["old"] = self.lambda_old * loss_old
        loss = torch.stack(list(parts.values())).sum()
        return StepResult(loss, parts, Outputs(logits), None)


def check_run(cfg: RunConfig) -> None:
    """What every lwf run refuses: a teacher, augmented views, other losses."""
    require(cfg.teacher is None, "lwf's teacher is its own task-A model, trained in its "
                                 "first stage; remove the 'teacher' section")
    require(cfg.view is None, "lwf records one response per training sample before "
                              "training; remove the 'view' section (augmented views)")
    require(all(loss.name == "ce" for loss in cfg.losses),
            "lwf trains task A with CE and task B with its own loss (CE on the new head + "
            "lambda_old * L_old); leave 'losses' at [{name: ce}]")


def task_test_set(cfg: RunConfig, classes: list[int]) -> RelabelledDataset:
    """The test samples of ``classes`` of ``cfg``'s data set, relabelled ``0..n-1``."""
    splits = normalize_splits(load_dataset(cfg.data.name, **cfg.data.options),
                              cfg.data.normalize)  # as the run's own data (api.build_data)
    return select_classes(splits.test, classes)


class LwfStageOptions(SchemeOptions):
    old_run: str = Field(description="the task-A run directory (its model records Y_o)")
    old_classes: list[int] = Field(description="task A's classes of the data set, in the "
                                   "task-A model's order")
    mode: Literal["lwf", "finetune", "warmup"] = Field(
        "lwf", description="lwf; finetune (θ_o fixed, L_new only); warmup (θ_n alone)")
    lambda_old: float = Field(1.0, ge=0.0, description="λ_o, the weight of L_old (paper: 1)")
    T: float = Field(2.0, gt=0.0, description="temperature of L_old (paper: 2)")


@register("lwf-stage", paper=PAPER)
class LwfStage(Scheme):
    """One task-B stage of learning without forgetting (or its fine-tuning baseline)."""

    Options = LwfStageOptions

    def adapt_data(self, cfg: RunConfig, data: RunData) -> RunData:
        """Task B's data with labels offset by K_A, so the model has K_A + K_B classes."""
        o = self.options
        check_run(cfg)
        require(cfg.data.classes is not None and cfg.data.rest == "drop",
                "an lwf stage trains on the new task's classes alone: set data.classes and "
                "no data.rest")
        require(cfg.student.init is not None, "an lwf stage starts from the task-A model: set "
                                              "student.init to its run (or its warm-up run)")
        assert cfg.data.classes is not None
        shared = sorted(set(o.old_classes) & set(cfg.data.classes))
        require(not shared, f"scheme.old_classes and data.classes share classes {shared}")
        k_old = read_model_description(o.old_run)["num_classes"]
        require(k_old == len(o.old_classes), f"the task-A run {o.old_run!r} predicts {k_old} "
                f"classes but scheme.old_classes lists {len(o.old_classes)}")
        names = data.splits.train.base.classes  # the data set's (a class subset's base)
        classes = [names[c] for c in o.old_classes] + list(data.splits.classes)

        def offset(ds: Any) -> RelabelledDataset:
            return RelabelledDataset(ds, torch.arange(ds.num_classes) + k_old, classes)

        splits = replace(data.splits, train=offset(data.splits.train),
                         test=offset(data.splits.test), num_classes=len(classes))
        return RunData(splits, offset(data.train),
                       offset(data.val) if data.val is not None else None, offset(data.test))

    def build_step(self, inputs: StepInputs) -> TrainStep:
        o = self.options
        old_weights = read_tensors(Path(o.old_run) / WEIGHTS)
        rows = grown_rows(inputs.student, old_weights, len(o.old_classes),
                          inputs.data.num_classes)
        return LwfStep(inputs.student, load_run_model(o.old_run), rows,
                       num_samples=len(inputs.data.train), mode=MODES[o.mode],
                       lambda_old=o.lambda_old, T=o.T)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        """Task-aware accuracy on each task's test set (percent), and the agreement of the
        old head with the task-A model on task A's test set."""
        assert isinstance(step, LwfStep) and cfg.data.classes is not None
        o, k = self.options, step.k_old
        old = load_run_model(o.old_run).to(trainer.device)
        a = evaluate_on(trainer, HeadSlice(step.student, 0, k), task_test_set(cfg, o.old_classes),
                        num_classes=k, teacher=old)
        b = evaluate_on(trainer, HeadSlice(step.student, k), task_test_set(cfg, cfg.data.classes),
                        num_classes=len(cfg.data.classes))
        old_acc, new_acc = 100.0 * a["accuracy"], 100.0 * b["accuracy"]
        numbers = {"old_task_accuracy": old_acc, "new_task_accuracy": new_acc,
                   "agreement": 100.0 * a["agreement"], "test_accuracy": (old_acc + new_acc) / 2}
        record = {"variant": o.mode, "student": cfg.student.name,
                  "student_options": cfg.student.options, **numbers}
        return {**numbers, "records": [record]}


class LwfOptions(SchemeOptions):
    task_a: list[int] | None = Field(None, description="task A's classes (default: the first "
                                     "half of the data set's)")
    task_b: list[int] | None = Field(None, description="task B's classes (default: the rest)")
    lambda_old: float = Field(1.0, ge=0.0, description="λ_o, the weight of L_old (paper: 1)")
    T: float = Field(2.0, gt=0.0, description="temperature of L_old (paper: 2)")
    finetune: bool = Field(True, description="also run the fine-tuning baseline")
    task_a_epochs: int | None = Field(None, gt=0, description="epochs of task A (default: "
                                      "train.epochs)")
    warmup_epochs: int = Field(0, ge=0, description="the paper's warm-up: epochs training "
                               "the new head alone before both tasks' stages (0: none)")


@register("lwf", paper=PAPER)
class LearningWithoutForgetting(Scheme):
    """Task A, then task B with LwF (and the fine-tuning baseline), each a resumable stage."""

    Options = LwfOptions
    sequence = True

    def tasks(self, cfg: RunConfig, runner: Runner) -> tuple[list[int], list[int]]:
        """The two tasks' classes, checked (before any training)."""
        check_run(cfg)
        require(cfg.data.classes is None, "lwf picks each stage's classes from scheme.task_a "
                                          "and scheme.task_b; remove data.classes")
        k = runner.data(cfg).num_classes
        o = self.options
        a = o.task_a if o.task_a is not None else list(range(k // 2))
        b = o.task_b if o.task_b is not None else [c for c in range(k) if c not in a]
        for name, task in (("task_a", a), ("task_b", b)):
            require(len(task) > 0, f"scheme.{name} is empty: list the classes of that task")
            require(len(set(task)) == len(task), f"scheme.{name} repeats a class: {task}")
            bad = [c for c in task if not 0 <= c < k]
            require(not bad, f"scheme.{name} has classes {bad} outside the data set's "
                             f"classes 0..{k - 1}")
        shared = sorted(set(a) & set(b))
        require(not shared, f"scheme.task_a and scheme.task_b share classes {shared}; the "
                            "tasks must be disjoint")
        return a, b

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        o = self.options
        task_a, task_b = self.tasks(cfg, runner)
        data_a = cfg.data.model_dump(mode="json", exclude_none=True) | {"classes": task_a}
        epochs = o.task_a_epochs or cfg.train.epochs
        first = runner.stage(derive(cfg, "task-a", data=data_a,
                                    train=cfg.train.model_copy(update={"epochs": epochs})))

        def stage(mode: str, start: Path, **changes: Any) -> StageResult:
            student = cfg.student.model_dump(mode="json", exclude_none=True)
            student.pop("weights", None)
            scheme = {"name": "lwf-stage", "mode": mode, "old_run": str(first.run_dir),
                      "old_classes": task_a, "lambda_old": o.lambda_old, "T": o.T}
            return runner.stage(derive(
                cfg, mode, data={**data_a, "classes": task_b},
                student={**student, "init": str(start)}, losses=[{"name": "ce"}],
                scheme=scheme, **changes))

        start, warm_seconds = first.run_dir, 0.0
        if o.warmup_epochs:
            warm = stage("warmup", start, train=cfg.train.model_copy(
                update={"epochs": o.warmup_epochs}))
            start, warm_seconds = warm.run_dir, float(warm.summary["train_time_s"])
        modes = ["lwf", "finetune"] if o.finetune else ["lwf"]
        results = {mode: stage(mode, start) for mode in modes}
        before = 100.0 * first.summary["test"]["accuracy"]
        ft = results["finetune"].summary["scheme"] if o.finetune else {}
        records = []
        for mode, result in results.items():
            n = result.summary["scheme"]
            records.append({
                "variant": mode, "student": cfg.student.name,
                "student_options": cfg.student.options,
                **{k: n[k] for k in ("test_accuracy", "agreement", "old_task_accuracy",
                                     "new_task_accuracy")},
                "old_task_accuracy_finetune": ft.get("old_task_accuracy"),
                "new_task_accuracy_finetune": ft.get("new_task_accuracy"),
                "old_task_accuracy_before": before,
                "forgetting": before - n["old_task_accuracy"],
                "train_seconds": float(result.summary["train_time_s"]) + warm_seconds,
                "run_dir": str(result.run_dir)})
        return records


__all__ = ["MODES", "FrozenRows", "HeadSlice", "LearningWithoutForgetting", "LwfStage",
           "LwfStep", "Mode", "RecordedResponses", "grown_rows", "lwf_losses"]
