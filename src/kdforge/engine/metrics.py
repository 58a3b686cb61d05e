"""Evaluation: student accuracy, calibration, and fidelity to the teacher.

All metrics are torchmetrics objects, so under ``torchrun`` they are reduced across ranks
when computed. Fidelity follows Stanton et al. 2021, "Does Knowledge Distillation Really
Work?": top-1 agreement and the KL divergence from teacher to student predictions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.core.outputs import Batch, Outputs, to_outputs
from kdforge.core.teacher import Teacher
from kdforge.data.loaders import to_batch

#: metric name -> one-line meaning, for tables and docs.
METRIC_DOCS = {
    "accuracy": "top-1 accuracy of the student on the labels",
    "nll": "cross-entropy of the student on the labels",
    "ece": "expected calibration error, 15 equal-width confidence bins (Guo et al. 2017)",
    "agreement": "fraction of samples where student and teacher top-1 classes agree",
    "agreement_top5": "fraction where the teacher's top-1 class is in the student's top-5",
    "kl": "mean KL(teacher || student) of the T=1 predictive distributions",
}


class Evaluator:
    """Accumulates the metrics of one evaluation pass (one instance per pass).

    Args:
        num_classes: K.
        with_teacher: also measure agreement and KL against the teacher.
        device: where the metric states live (the model's device).
    """

    def __init__(self, num_classes: int, with_teacher: bool, device: torch.device) -> None:
        # imported here: torchmetrics' package import (its audio, image and text parts,
        # torchvision) costs seconds that every command which never evaluates would pay
        from torchmetrics import MeanMetric, MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
        from torchmetrics.regression import KLDivergence

        top5 = min(5, num_classes)
        metrics: dict[str, nn.Module] = {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "nll": MeanMetric(),
            "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
        }
        if with_teacher:
            metrics["agreement"] = MulticlassAccuracy(num_classes, average="micro")
            metrics["agreement_top5"] = MulticlassAccuracy(num_classes, top_k=top5,
                                                           average="micro")
            metrics["kl"] = KLDivergence(log_prob=True, reduction="mean")
        self.metrics = MetricCollection(metrics, compute_groups=False).to(device)
        self.with_teacher = with_teacher

    def update(self, student: Tensor, targets: Tensor | None, teacher: Tensor | None) -> None:
        """Add a batch: student logits ``(B, K)``, labels ``(B,)``, teacher logits ``(B, K)``."""
        s = student.detach().float()
        m = self.metrics
        if targets is not None:
            m["accuracy"].update(s, targets)
            m["nll"].update(F.cross_entropy(s, targets, reduction="none"))
            m["ece"].update(s.softmax(-1), targets)
        if self.with_teacher:
            assert teacher is not None
            t = teacher.detach().float()
            t_top1 = t.argmax(-1)
            m["agreement"].update(s, t_top1)
            m["agreement_top5"].update(s, t_top1)
            m["kl"].update(t.log_softmax(-1), s.log_softmax(-1))

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.compute().items()}


@torch.no_grad()
def evaluate(student: nn.Module, loader: Iterable, *, num_classes: int,
             teacher: nn.Module | None = None, device: torch.device | str = "cpu",
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Evaluate ``student`` (in eval mode) on ``loader``; fidelity metrics if a teacher is given.

    ``teacher`` is a :class:`~kdforge.teachers.Teacher` (called as ``teacher(x, batch)``) or a
    plain module. The student's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    evaluator = Evaluator(num_classes, teacher is not None, device)
    for batch, s, t in forward_pass(student, loader, teacher=teacher, device=device,
                                    autocast_dtype=autocast_dtype):
        y = batch.targets.to(device) if batch.targets is not None else None
        evaluator.update(s, y if y is not None and y.dtype == torch.long else None, t)
    return evaluator.compute()


def forward_pass(student: nn.Module, loader: Iterable, *, teacher: nn.Module | None = None,
                 device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None
                 ) -> Iterator[tuple[Batch, Tensor, Tensor | None]]:
    """``(batch, student logits, teacher logits or None)`` for every batch of ``loader``,
    the student in eval mode (its mode restored afterwards), the teacher on its own inputs
    when the batch carries them. The one evaluation loop: metrics and stored predictions."""
    device = torch.device(device)
    was_training = student.training
    student.eval()
    try:
        for raw in loader:
            batch: Batch = to_batch(raw)
            x = batch.inputs.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                s = to_outputs(student(x)).logits
                t: Outputs | None = None
                if teacher is not None:
                    tx = batch.teacher_inputs.to(device) if batch.teacher_inputs is not None else x
                    t = _teacher_outputs(teacher, tx, batch)
            yield batch, s, t.logits if t is not None else None
    finally:
        student.train(was_training)


def _teacher_outputs(teacher: nn.Module, x: Tensor, batch: Batch) -> Outputs:
    """The teacher's outputs in eval mode (a peer that is being trained included)."""
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher(x, batch) if isinstance(teacher, Teacher) else to_outputs(teacher(x))
    finally:
        teacher.train(was_training)


@torch.no_grad()
def measure_latency(model: nn.Module, example: Tensor, *, warmup: int = 5, repeats: int = 20,
                    device: torch.device | str = "cpu") -> float:
    """Median milliseconds of one forward pass of ``model`` on the batch ``example``."""
    device = torch.device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    x = example.to(device)
    times: list[float] = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    times.sort()
    return 1000.0 * times[len(times) // 2]
