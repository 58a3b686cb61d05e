"""Modalities: deterministic per-sample transforms that make another sensor's view of a sample.

Cross-modal distillation (:mod:`kdforge.schemes.cross_modal`) pairs each clean sample
``x_i`` (what the teacher was trained on) with another representation ``m(x_i)`` of the
same sample (what the student sees). A :class:`Modality` is that ``m``: built for one input
shape, it states its output shape (:attr:`Modality.output_shape`) and maps a batch
``(B, *input_shape)`` and the samples' keys ``(B,)`` to ``(B, *output_shape)``.

Every transform is a function of the sample alone: its random parts (``noise``, ``mask``)
draw from a generator seeded by the sample's key and the ``seed`` option, so sample ``i``
gets the same representation in every epoch and whatever batch it falls in. Registered
(``MODALITIES``; the option names follow each class's keyword arguments):

- ``blur``: Gaussian low-pass per channel over the signal / image axes (``sigma``,
  ``radius``; replicate padding, so a constant stays constant). Shape unchanged.
- ``downsample``: mean over non-overlapping windows of ``factor`` samples per axis:
  ``(C, L) -> (C, L // factor)``, ``(C, H, W) -> (C, H // factor, W // factor)``.
- ``noise``: additive Gaussian noise of standard deviation ``std``. Shape unchanged.
- ``mask``: each feature zeroed with probability ``fraction`` (a dead-pixel sensor).
- ``project``: a fixed random linear map to ``dim`` features, ``W x`` with
  ``W_jk ~ N(0, 1/D)`` drawn once from ``seed``: ``(*shape) -> (1, dim)``.

:func:`build_modality` composes a list of steps (``[{name: blur, sigma: 2}, {name:
downsample, factor: 2}]``) into one :class:`ModalityChain`; :class:`PairedModality` wraps a
data set so each sample yields ``input`` = ``m(x_i)`` and ``teacher_input`` = ``x_i``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.core.errors import ConfigError, DataError
from kdforge.core.registry import Registry, call_with_checked_kwargs
from kdforge.data.datasets.base import Indices, LabeledDataset, _index_tensor, _position

#: Registered modalities by name: :class:`Modality` subclasses.
MODALITIES: Registry[type[Modality]] = Registry("modality")

_MASK64 = (1 << 64) - 1
#: Keys of the samples of one split: ``stream * STREAM + position`` (see PairedModality).
STREAM = 1 << 40


def register_modality(name: str, *, source: str):
    """Class decorator registering a :class:`Modality` under ``name``."""
    return MODALITIES.register_named(name, source=source)


def sample_seed(seed: int, key: int) -> int:
    """A 63-bit generator seed from ``seed`` and a sample's ``key`` (SplitMix64 finaliser),
    so neighbouring keys get unrelated random streams."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(key) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def spatial_rank(what: str, shape: tuple[int, ...]) -> int:
    """1 for ``(C, L)`` signals, 2 for ``(C, H, W)`` images; ``ConfigError`` otherwise."""
    if len(shape) not in (2, 3):
        raise ConfigError(f"modality {what!r} works on (C, L) signals or (C, H, W) images; the "
                          f"samples have shape {tuple(shape)}")
    return len(shape) - 1


def _number(what: str, option: str, value: Any, *, low: float, low_ok: bool = False,
            high: float | None = None) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"modality {what!r}: {option} must be a number, got {value!r}") from None
    bad = (out < low if low_ok else out <= low) or (high is not None and out >= high)
    if bad or not math.isfinite(out):
        rng = f"{'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if high else "")
        raise ConfigError(f"modality {what!r}: {option} must be {rng}, got {value!r}")
    return out


def _integer(what: str, option: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"modality {what!r}: {option} must be an integer >= {low}, "
                          f"got {value!r}")
    return value


class Modality:
    """Base of the registered transforms; see the module docstring.

    Args:
        input_shape: one clean sample's shape.
        seed: seeds the transform's random parts (with each sample's key).

    Subclasses compute :attr:`output_shape` in ``__init__`` (refusing shapes they cannot
    take with a ``ConfigError``) and implement :meth:`apply`.
    """

    name: ClassVar[str] = ""

    def __init__(self, input_shape: Sequence[int], seed: int = 0) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.seed = int(seed)
        self.output_shape: tuple[int, ...] = self.input_shape

    def __call__(self, x: Tensor, keys: Tensor) -> Tensor:
        """``(B, *input_shape)`` clean samples and their ``(B,)`` keys -> ``(B, *output_shape)``."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"modality {self.name!r} was built for samples of shape "
                            f"{self.input_shape}, got a batch {tuple(x.shape)}")
        if keys.shape != (x.shape[0],):
            raise DataError(f"modality {self.name!r}: {tuple(keys.shape)} keys for a batch of "
                            f"{x.shape[0]}")
        return self.apply(x.float(), keys)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        raise NotImplementedError

    def generators(self, keys: Tensor) -> list[torch.Generator]:
        """One generator per sample, seeded by ``seed`` and the sample's key."""
        return [torch.Generator().manual_seed(sample_seed(self.seed, k)) for k in keys.tolist()]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@register_modality("blur", source="Gaussian low-pass filter: a blurrier sensor")
class Blur(Modality):
    """Gaussian blur over the signal / image axes, per channel; shape unchanged.

    ``y[p] = sum_{|j| <= r} w_j x[p + j]``, ``w_j = exp(-j^2 / (2 sigma^2)) / sum_k w_k``, per
    axis (separable in 2-D), ``r = radius`` (default ``ceil(3 sigma)``), the edges padded by
    repeating the border sample.
    """

    def __init__(self, input_shape: Sequence[int], seed: int = 0, sigma: float = 1.0,
                 radius: int | None = None) -> None:
        super().__init__(input_shape, seed)
        self.rank = spatial_rank(self.name, self.input_shape)
        self.sigma = _number(self.name, "sigma", sigma, low=0.0)
        self.radius = (math.ceil(3 * self.sigma) if radius is None
                       else _integer(self.name, "radius", radius, low=1))
        j = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        w = torch.exp(-(j**2) / (2 * self.sigma**2))
        self.kernel = (w / w.sum()).to(torch.float32)

    def _along_last(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, 1, x.shape[-1])
        padded = F.pad(flat, (self.radius, self.radius), mode="replicate")
        return F.conv1d(padded, self.kernel.view(1, 1, -1)).reshape(x.shape)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        out = self._along_last(x)
        if self.rank == 2:
            out = self._along_last(out.transpose(-1, -2)).transpose(-1, -2).contiguous()
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "radius": self.radius}


@register_modality("downsample", source="mean pooling: a lower-resolution sensor")
class Downsample(Modality):
    """Mean over non-overlapping windows of ``factor`` samples along each signal / image
    axis (a remainder shorter than ``factor`` is dropped): ``(C, L) -> (C, L // factor)``,
    ``(C, H, W) -> (C, H // factor, W // factor)``."""

    def __init__(self, input_shape: Sequence[int], seed: int = 0, factor: int = 2) -> None:
        super().__init__(input_shape, seed)
        self.rank = spatial_rank(self.name, self.input_shape)
        self.factor = _integer(self.name, "factor", factor, low=2)
        short = [s for s in self.input_shape[1:] if s < self.factor]
        if short:
            raise ConfigError(f"modality 'downsample': factor {self.factor} is longer than the "
                              f"samples' axes {self.input_shape[1:]}; use a smaller factor")
        self.output_shape = (self.input_shape[0],
                             *(s // self.factor for s in self.input_shape[1:]))

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        pool = F.avg_pool1d if self.rank == 1 else F.avg_pool2d
        return pool(x, self.factor, self.factor)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "factor": self.factor}


@register_modality("noise", source="additive Gaussian noise, seeded per sample: a noisy sensor")
class Noise(Modality):
    """``x_i + std * e_i`` with ``e_i ~ N(0, I)`` drawn from the generator of sample ``i``."""

    def __init__(self, input_shape: Sequence[int], seed: int = 0, std: float = 0.5) -> None:
        super().__init__(input_shape, seed)
        self.std = _number(self.name, "std", std, low=0.0)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        noise = torch.stack([torch.randn(self.input_shape, generator=g)
                             for g in self.generators(keys)]) if len(keys) else torch.zeros_like(x)
        return x + self.std * noise.to(x.device)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "std": self.std, "seed": self.seed}


@register_modality("mask", source="random feature dropout, seeded per sample: dead pixels")
class Mask(Modality):
    """Each feature of sample ``i`` is zeroed when its draw ``u ~ U[0, 1)`` from the
    sample's generator falls below ``fraction``; shape unchanged."""

    def __init__(self, input_shape: Sequence[int], seed: int = 0, fraction: float = 0.25) -> None:
        super().__init__(input_shape, seed)
        self.fraction = _number(self.name, "fraction", fraction, low=0.0, high=1.0)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        if not len(keys):
            return x
        keep = torch.stack([torch.rand(self.input_shape, generator=g) >= self.fraction
                            for g in self.generators(keys)])
        return x * keep.to(x.device, x.dtype)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fraction": self.fraction, "seed": self.seed}


@register_modality("project", source="fixed random linear projection: another input space")
class Project(Modality):
    """``W flatten(x)`` with one fixed ``W`` of shape ``(dim, D)``, ``W_jk ~ N(0, 1/D)``
    drawn from ``seed`` (``D`` = the sample's size): ``(*shape) -> (1, dim)``, a one-channel
    signal (so both an MLP and a 1-D CNN take it)."""

    def __init__(self, input_shape: Sequence[int], seed: int = 0, dim: int = 32) -> None:
        super().__init__(input_shape, seed)
        self.dim = _integer(self.name, "dim", dim, low=1)
        size = math.prod(self.input_shape)
        gen = torch.Generator().manual_seed(sample_seed(self.seed, -1))
        self.weight = torch.randn(self.dim, size, generator=gen) / math.sqrt(size)
        self.output_shape = (1, self.dim)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        out = x.flatten(1) @ self.weight.to(x.device).T
        return out.reshape(x.shape[0], *self.output_shape)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "seed": self.seed}


class ModalityChain(Modality):
    """Steps applied in order, each built for the previous one's output shape."""

    def __init__(self, steps: Sequence[Modality]) -> None:
        if not steps:
            raise ConfigError("a modality needs at least one step, e.g. {name: blur, sigma: 2}")
        super().__init__(steps[0].input_shape, steps[0].seed)
        self.steps = list(steps)
        self.output_shape = self.steps[-1].output_shape
        self.name = "+".join(step.name for step in self.steps)

    def apply(self, x: Tensor, keys: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x, keys)
        return x

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [step.describe() for step in self.steps]}


def build_modality(steps: Sequence[Mapping[str, Any]], input_shape: Sequence[int],
                   seed: int = 0) -> ModalityChain:
    """The chain of ``steps`` (``{name: ..., **options}`` each) for clean samples of
    ``input_shape``; step ``k`` is seeded ``seed + k`` unless it gives its own ``seed``.

    Raises:
        ConfigError: an unknown name (with the closest ones), an option the transform does
            not take (listing those it takes), a bad value, or a shape it cannot take.
    """
    built: list[Modality] = []
    shape = tuple(input_shape)
    for k, spec in enumerate(steps):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"modality step {k + 1} needs a 'name' (one of "
                              f"{', '.join(MODALITIES.names())}), got {dict(spec)}")
        if "input_shape" in options:
            raise ConfigError(f"modality {name!r}: input_shape is the data's (or the previous "
                              "step's output); remove it")
        options.setdefault("seed", int(seed) + k)
        step = call_with_checked_kwargs("modality", name, MODALITIES.get(name),
                                        {"input_shape": shape, **options})
        built.append(step)
        shape = step.output_shape
    return ModalityChain(built)


class PairedModality:
    """A data set whose samples pair the student's modality with the clean sample.

    ``ds[i]`` is ``{"input": m(x_i), "teacher_input": x_i, "target": y_i, "index": i}``
    (``__getitems__`` the same, batched), where ``x_i`` is sample ``i`` of ``base``; with
    ``labels=False`` there is no ``target`` (and ``targets`` is ``None``): the student learns
    from the paired inputs alone. Sample ``i``'s key, which seeds the transform's random
    parts, is ``stream * STREAM + i`` (``keys`` overrides them); a subset keeps its samples'
    keys, so a sample keeps its representation.

    Args:
        base: a data set of the contract in :mod:`kdforge.data.datasets`.
        modality: the transform ``m``, built for ``base.input_shape``.
        stream: distinguishes the splits (train, validation, test) in the keys.
        labels: keep the labels.
    """

    def __init__(self, base: LabeledDataset, modality: Modality, *, stream: int = 0,
                 labels: bool = True, keys: Tensor | None = None) -> None:
        if tuple(base.input_shape) != modality.input_shape:
            raise ConfigError(f"modality {modality.name!r} was built for samples of shape "
                              f"{modality.input_shape}, the data set's are "
                              f"{tuple(base.input_shape)}")
        self.base, self.modality, self.stream, self.labels = base, modality, stream, labels
        n = len(base)
        self.keys = (keys.to(torch.int64) if keys is not None
                     else stream * STREAM + torch.arange(n, dtype=torch.int64))
        if self.keys.shape != (n,):
            raise ConfigError(f"{tuple(self.keys.shape)} keys for a data set of {n} samples")
        self.classes = list(base.classes)
        self.targets = base.targets if labels else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The student's input shape (the modality's output)."""
        return self.modality.output_shape

    @property
    def clean_shape(self) -> tuple[int, ...]:
        return self.modality.input_shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = _index_tensor(indices, len(self))
        items = self.base.__getitems__(idx.tolist())
        clean = items["input"]
        out = {"input": self.modality(clean, self.keys.index_select(0, idx)),
               "teacher_input": clean, "index": idx}
        if self.labels:
            out["target"] = items["target"]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = _position(i, len(self))
        item: dict[str, Any] = {k: v[0] for k, v in self.__getitems__([pos]).items()}
        item["index"] = pos
        return item

    def subset(self, indices: Indices) -> PairedModality:
        idx = _index_tensor(indices, len(self))
        return PairedModality(self.base.subset(idx), self.modality, stream=self.stream,
                              labels=self.labels, keys=self.keys.index_select(0, idx))

    def __repr__(self) -> str:
        return (f"PairedModality({len(self)} samples, {self.modality.name}: "
                f"{self.clean_shape} -> {self.input_shape}, labels={self.labels})")


__all__ = ["MODALITIES", "STREAM", "Blur", "Downsample", "Mask", "Modality", "ModalityChain",
           "Noise", "PairedModality", "Project", "build_modality", "register_modality",
           "sample_seed", "spatial_rank"]
