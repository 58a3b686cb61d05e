"""Several teachers combined into one teaching signal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch, Outputs
from kdforge.teachers.base import Teacher
from kdforge.teachers.module import ModuleTeacher

COMBINE_RULES = ("mean_probs", "mean_logits")


@dataclass
class EnsembleOutputs(Outputs):
    """An ensemble's :class:`Outputs`, with every member's logits beside the combined ones.

    Attributes:
        member_logits: ``(M, B, K)`` float32, member ``m``'s logits in row ``m`` (what terms
            that weigh the teachers separately read, e.g. ``aekd``); ``None`` if unknown.
    """

    member_logits: Tensor | None = None

    def detach(self) -> EnsembleOutputs:
        plain = super().detach()
        members = None if self.member_logits is None else self.member_logits.detach()
        return EnsembleOutputs(plain.logits, plain.features, plain.probs, members)


class EnsembleTeacher(Teacher):
    """An ensemble of teachers with a stated combination rule.

    Rules, with member logits ``z_i`` and weights ``w_i`` (normalised to sum to 1):

    - ``"mean_probs"`` (default; Hinton et al. 2015, sec. 1): ``p = sum_i w_i softmax(z_i)``;
      the returned logits are ``log p``, so ``softmax(logits) == p`` exactly. With a KD
      temperature ``T`` the student then matches ``softmax(log p / T)``: the mean of the
      members' probabilities, sharpened or softened afterwards.
    - ``"mean_logits"``: ``z = sum_i w_i z_i`` (Anil et al. 2018 use logit averaging).

    The returned :class:`EnsembleOutputs` also carry every member's logits
    (``member_logits``, ``(M, B, K)``), for terms that weigh the teachers themselves.

    Features of member ``i`` are requested as ``"i:layer"`` and returned under that name;
    with ``names``, a member may also be named, ``"name:layer"`` (returned under that name,
    and under its index as well),
    so that a feature or relation term can be taken against one chosen teacher.

    Args:
        teachers: the members, ``Teacher`` objects or plain modules (wrapped in
            ``ModuleTeacher``).
        combine: ``"mean_probs"`` or ``"mean_logits"``.
        weights: optional non-negative weight per member (default: equal).
        names: optional unique name per member (no ``:``, not a number).
    """

    def __init__(self, teachers: Sequence[nn.Module], combine: str = "mean_probs",
                 weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None) -> None:
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
        self.names = _check_names(names, len(teachers))
        self.members = nn.ModuleList(
            t if isinstance(t, Teacher) else ModuleTeacher(t) for t in teachers
        )
        self.combine = combine
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]),
                             persistent=False)
        #: features requested by member name: returned name -> (member index, layer)
        self._named: dict[str, tuple[int, str]] = {}

    def member_index(self, key: str) -> int:
        """The index of the member ``key`` names (its index or its name)."""
        if key.isdigit() and int(key) < len(self.members):
            return int(key)
        if key in self.names:
            return self.names.index(key)
        named = f", or a member name: {', '.join(self.names)}" if self.names else ""
        raise ConfigError(
            f"the ensemble has no member {key!r}: name a member by its index "
            f"0..{len(self.members) - 1}{named}"
        )

    def require_features(self, names: Iterable[str]) -> None:
        per_member: dict[int, list[str]] = {}
        for name in names:
            key, sep, layer = name.partition(":")
            if not sep or not key or not layer:
                named = f" or a member name ({', '.join(self.names)})" if self.names else ""
                raise ConfigError(
                    f"ensemble feature {name!r} must be 'i:layer' with member i in "
                    f"0..{len(self.members) - 1}{named}, e.g. '0:layer3'"
                )
            index = self.member_index(key)
            if not key.isdigit():
                self._named[name] = (index, layer)
            per_member.setdefault(index, []).append(layer)
        for index, layers in per_member.items():
            self.members[index].require_features(layers)

    def forward(self, inputs: Tensor, batch: Batch | None = None) -> EnsembleOutputs:
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
        features.update({name: outs[i].features[layer]
                         for name, (i, layer) in self._named.items()})
        return EnsembleOutputs(combined, features, member_logits=logits)


def _check_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return []
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n or ":" in n or n.isdigit()]
    if len(names) != count or len(set(names)) != len(names) or bad:
        raise ConfigError(
            f"ensemble member names must be {count} distinct words without ':' that are not "
            f"numbers (numbers are the members' indices), got {names}"
        )
    return names


__all__ = ["COMBINE_RULES", "EnsembleOutputs", "EnsembleTeacher"]
