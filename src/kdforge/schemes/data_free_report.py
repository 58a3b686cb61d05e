"""What a data-free run reports: its record, a grid of generated inputs and the classes
the teacher sees in them (``generated.png``, ``generated_classes.png``), so a collapsed
generator (one class, one image) shows at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.config import RunConfig
from kdforge.engine.distributed import env_from_torchrun
from kdforge.schemes.base import RunData, TrainingInputsForbidden, evaluate_on

#: Generated samples whose teacher predictions are counted (and the first 64 drawn).
SAMPLES = 512


@torch.no_grad()
def generated_samples(step: Any, z_dim: int, seed: int, device: Any,
                      n: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated inputs from fixed noise (generator in eval mode) and the teacher's
    predicted classes on them."""
    was = step.generator.training
    step.generator.eval()
    try:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, z_dim, generator=gen).to(device)
        x = step.generator(z)
        classes = step.teacher(x).logits.argmax(dim=1)
    finally:
        step.generator.train(was)
    return x.cpu(), classes.cpu()


def save_pictures(run_dir: Path, x: torch.Tensor, counts: list[int], names: list[str]) -> None:
    """The grid of the first 64 inputs (images: first channel; signals: curves) and the
    histogram of the teacher's classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = x[:64]
    side = 8
    fig, axes = plt.subplots(side, side, figsize=(8, 8))
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(shown):
            continue
        sample = shown[i]
        if sample.dim() == 3:
            ax.imshow(sample[0].numpy(), cmap="gray")
        else:
            for channel in sample:
                ax.plot(channel.numpy(), linewidth=0.8)
    fig.suptitle("generated inputs")
    fig.savefig(run_dir / "generated.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(counts)), counts)
    ax.set_xticks(range(len(counts)), names, rotation=45 if len(names) > 10 else 0)
    ax.set_xlabel("teacher's predicted class")
    ax.set_ylabel(f"of {sum(counts)} generated")
    fig.tight_layout()
    fig.savefig(run_dir / "generated_classes.png", dpi=80)
    plt.close(fig)


def data_free_report(cfg: RunConfig, step: Any, trainer: Any, data: RunData) -> dict[str, Any]:
    """The run's record (accuracy, agreement with the teacher, no training input read) and
    the class counts of the teacher's predictions on generated inputs."""
    k = data.num_classes
    test = evaluate_on(trainer, step.student, data.test, num_classes=k, teacher=step.teacher)
    x, classes = generated_samples(step, step.generator.z_dim, cfg.seed, trainer.device)
    counts = torch.bincount(classes, minlength=k).tolist()
    if trainer.run_dir is not None and env_from_torchrun().is_main:
        names = [str(c) for c in getattr(data.splits, "classes", None) or range(k)][:k]
        save_pictures(Path(trainer.run_dir), x, counts, names)
    read = 0 if isinstance(data.train, TrainingInputsForbidden) else None
    record = {"variant": None, "student": cfg.student.name,
              "student_options": cfg.student.options,
              "test_accuracy": 100.0 * test["accuracy"],
              "agreement": 100.0 * test["agreement"], "training_inputs_read": read,
              "generated_classes_seen": sum(1 for c in counts if c > 0)}
    return {"generated_classes": counts, "records": [record]}


__all__ = ["data_free_report", "generated_samples", "save_pictures"]
