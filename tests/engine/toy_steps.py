"""Small TrainSteps that exercise the seam the coming schemes need (imported by the seam
tests, in-process and in subprocesses)."""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.config import OptimConfig, TrainConfig
from kdforge.core.outputs import Batch, Outputs, StepResult
from kdforge.core.step import OptimGroup, TrainStep
from kdforge.data import load_dataset
from kdforge.engine.trainer import Trainer
from kdforge.teachers.module import ModuleTeacher


class AdversarialStep(TrainStep):
    """A toy min-max: an adversary perturbs the input to raise the student's loss, the
    student learns on the perturbed input. Two modules, two optimizers, phases in turn."""

    def __init__(self, dim: int = 8, classes: int = 4, eps: float = 0.3, every: int = 1) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))
        self.adversary = nn.Linear(dim, dim)
        self.eps, self.every = eps, every

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "adversary": self.adversary}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("adversary", list(self.adversary.parameters()),
                           optim={"name": "adam", "lr": 1e-2, "weight_decay": 0.0},
                           every=self.every),
                OptimGroup("student", list(self.student.parameters()))]

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        x = batch.inputs.flatten(1)
        perturbed = x + self.eps * torch.tanh(self.adversary(x))
        logits = self.student(perturbed)
        ce = F.cross_entropy(logits, batch.targets)
        loss = -ce if phase == "adversary" else ce
        return StepResult(loss, {"ce": ce.detach()}, Outputs(logits))


class DataFreeStep(TrainStep):
    """A toy of adversarial data-free KD (Fang et al. 2019): a generator maps noise to
    inputs on which student and teacher disagree; the student learns to agree. The teacher
    is frozen with gradients flowing to its input."""

    def __init__(self, teacher: nn.Module, latent: int = 6, dim: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(latent, dim), nn.Tanh())
        self.student = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))
        self.teacher = ModuleTeacher(teacher, gradients="input")

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "generator": self.generator}

    def optimizer_groups(self) -> list[OptimGroup]:
        return [OptimGroup("generator", list(self.generator.parameters()),
                           optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0}),
                OptimGroup("student", list(self.student.parameters()))]

    @property
    def eval_teacher(self) -> nn.Module:
        return self.teacher

    def step(self, batch: Batch, phase: str | None = None) -> StepResult:
        x = self.generator(batch.inputs)
        if phase == "student":
            x = x.detach()
        t = self.teacher(x).logits
        s = self.student(x)
        gap = (s - t).abs().mean()  # DFAD's L1 between logits
        loss = -gap if phase == "generator" else gap
        return StepResult(loss, {"l1": gap.detach()}, Outputs(s))


def vector_data(n: int = 96):
    return load_dataset("synthetic", num_classes=4, num_train=n, num_test=32, input_shape=(8,))


def train_adversarial(run_dir: str, epochs: int, resume: bool = False,
                      kill_after: int | None = None) -> AdversarialStep:
    """Train the min-max toy; ``kill_after``: SIGKILL this process after that epoch's
    checkpoint (a real crash: no clean-up runs)."""
    torch.manual_seed(0)
    step = AdversarialStep()
    data = vector_data()

    def kill(trainer, record) -> None:
        if record["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer(step, data.train, data.test, num_classes=4, batch_size=32,
            optim=OptimConfig(name="sgd", lr=0.05), train=TrainConfig(epochs=epochs, device="cpu"),
            run_dir=run_dir, verbose=False, callbacks=[kill]).fit(resume=resume)
    return step


if __name__ == "__main__":  # python -m tests.engine.toy_steps RUN_DIR EPOCHS [resume|kill:N]
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    torch.set_num_threads(1)
    try:
        train_adversarial(sys.argv[1], int(sys.argv[2]), resume=mode == "resume",
                          kill_after=int(mode[5:]) if mode.startswith("kill:") else None)
    finally:  # a gloo group left to the interpreter's exit aborts a rank now and then
        from kdforge.engine.distributed import shutdown

        shutdown()
