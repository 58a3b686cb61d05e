"""A frozen ``nn.Module`` as teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch, Outputs
from kdforge.core.teacher import GradientMode, NetworkTeacher

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModuleTeacher(NetworkTeacher):
    """Wraps a trained model as a frozen teacher.

    The model is put in eval mode and its parameters stop requiring gradients, so neither
    its weights nor its BatchNorm statistics can change during distillation. By default
    every forward pass runs under ``torch.no_grad()``; with ``gradients="input"`` the
    autograd graph is kept, so a loss on the teacher's outputs back-propagates into the
    teacher's *input* (a generator trained against a fixed teacher, as in data-free KD)
    while the weights stay fixed.

    Args:
        model: the trained teacher network (any ``nn.Module`` returning logits).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: autocast dtype for the
            teacher's forward pass (cheaper teaching); outputs are returned in float32.
        features: layer names (as in ``model.named_modules()``) to return as features.
        gradients: ``"none"`` (no graph) or ``"input"`` (gradients flow to the input).
    """

    def __init__(self, model: nn.Module, precision: str = "fp32",
                 features: Iterable[str] = (), gradients: GradientMode = "none") -> None:
        super().__init__(model, features)
        if gradients not in ("none", "input"):
            raise ConfigError(
                f"a frozen teacher's gradients are 'none' or 'input', got {gradients!r}; a "
                "network trained while it teaches is a PeerTeacher"
            )
        self.gradients = gradients
        if precision not in _PRECISIONS:
            raise ConfigError(
                f"teacher precision must be one of {sorted(_PRECISIONS)}, got {precision!r}"
            )
        self.precision = precision
        self.model.requires_grad_(False)
        self.eval()  # the wrapper too: a frozen teacher reports eval mode from the start

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        with torch.set_grad_enabled(self.gradients == "input" and torch.is_grad_enabled()):
            return self._forward(inputs)

    def _forward(self, inputs: Tensor) -> Outputs:
        if self.model.training:  # someone called .train() on the bare model
            self.model.eval()
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            raw = self.model(inputs)
        else:
            with torch.autocast(inputs.device.type, dtype=dtype):
                raw = self.model(inputs)
        out = self.outputs(raw)
        if dtype is not None:
            out = Outputs(out.logits.float(), {k: v.float() for k, v in out.features.items()})
        return out
