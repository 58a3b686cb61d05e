"""What ``kdforge compress`` measures: size, CPU latency, accuracy and agreement.

Latency is the median wall time of one forward pass after warm-up, on CPU with the stated
number of threads, every variant timed in the same process and interleaved
(:func:`kdforge.engine.latency.time_interleaved`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdforge.data.loaders import eval_loader, to_batch
from kdforge.engine.latency import threads, time_interleaved
from kdforge.models import count_parameters


@torch.no_grad()
def predictions(model: Callable[[Tensor], Tensor], dataset: Dataset, batch_size: int = 64
                ) -> tuple[Tensor, Tensor]:
    """Top-1 predictions of ``model`` on every sample of ``dataset`` (CPU), and targets."""
    preds, targets = [], []
    for raw in eval_loader(dataset, batch_size):
        batch = to_batch(raw)
        logits = model(batch.inputs)
        logits = logits.logits if hasattr(logits, "logits") else logits
        preds.append(torch.as_tensor(logits).argmax(-1))
        targets.append(batch.targets)
    return torch.cat(preds), torch.cat(targets)


def accuracy_and_agreement(preds: Tensor, targets: Tensor, reference: Tensor
                           ) -> dict[str, float]:
    """Test accuracy and top-1 agreement with ``reference`` predictions, in percent."""
    return {"accuracy": 100.0 * float((preds == targets).float().mean()),
            "agreement": 100.0 * float((preds == reference).float().mean())}


__all__ = ["accuracy_and_agreement", "count_parameters", "predictions", "threads",
           "time_interleaved"]
