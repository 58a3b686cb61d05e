"""Several teachers combined into one teaching signal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.teachers.base import Teacher
from kdforge.teachers.module import ModuleTeacher

COMBINE_RULES = ("mean_probs", "mean_logits")


class EnsembleTeacher(Teacher):
    """An ensemble of teachers with a stated combination rule.

    Rules, with member logits ``z_i`` and weights ``w_i`` (normalised to sum to 1):

    - ``"mean_probs"`` (default; Hinton et al. 2015, sec. 1): ``p = sum_i w_i softmax(z_i)``;
      the returned logits are ``log p``, so ``softmax(logits) == p`` exactly. With a KD
      temperature ``T`` the student then matches ``softmax(log p / T)``: the mean of the
      members' probabilities, sharpened or softened afterwards.
    - ``"mean_logits"``: ``z = sum_i w_i z_i`` (Anil et al. 2018 use logit averaging).

    Features of member ``i`` are requested as ``"i:layer"`` and returned under that name.

    Args:
        teachers: the members, ``Teacher`` objects or plain modules (wrapped in
            ``ModuleTeacher``).
        combine: ``"mean_probs"`` or ``"mean_logits"``.
        weights: optional non-negative weight per member (default: equal).
    """

    def __init__(self, teachers: Sequence[nn.Module], combine: str = "mean_probs",
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not teachers:
            raise ConfigError("an ensemble needs at least one teacher")
        if combine not in COMBINE_RULES:
            raise ConfigError(f"ensemble combine must be one of {COMBINE_RULES}, got {combine!r}")
        if weights is None:
            weights = [1.0] * len(teachers)
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"ensemble weights must be {len(teachers)} non-negative numbers with a positive "
                f"sum, got {list(weights)}"
            )
        self.members = nn.ModuleList(
            t if isinstance(t, Teacher) else ModuleTeacher(t) for t in teachers
        )
        self.combine = combine
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]),
                             persistent=False)

    def require_features(self, names: Iterable[str]) -> None:
        per_member: dict[int, list[str]] = {}
        for name in names:
            index, sep, layer = name.partition(":")
            if not sep or not index.isdigit() or int(index) >= len(self.members):
                raise ConfigError(
                    f"ensemble feature {name!r} must be 'i:layer' with member i in "
                    f"0..{len(self.members) - 1}, e.g. '0:layer3'"
                )
            per_member.setdefault(int(index), []).append(layer)
        for index, layers in per_member.items():
            self.members[index].require_features(layers)

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> Outputs:
        outs = [member(inputs, batch) for member in self.members]
        shapes = {tuple(o.logits.shape) for o in outs}
        if len(shapes) != 1:
            raise ShapeMismatchError(
                f"ensemble members give logits of different shapes {sorted(shapes)}; all "
                "teachers must predict the same classes"
            )
        logits = torch.stack([o.logits.float() for o in outs])  # (M, B, K)
        w = self.weights.to(logits.device).view(-1, 1, 1)
        if self.combine == "mean_logits":
            combined = (w * logits).sum(0)
        else:
            # log sum_i w_i softmax(z_i), computed stably in log space.
            log_w = torch.log(w.clamp_min(1e-30))
            combined = torch.logsumexp(log_w + torch.log_softmax(logits, dim=-1), dim=0)
        features = {f"{i}:{k}": v for i, o in enumerate(outs) for k, v in o.features.items()}
        return Outputs(combined, features)


__all__ = ["COMBINE_RULES", "EnsembleTeacher"]
