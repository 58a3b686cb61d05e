"""Auxiliary exits on an unmodified network: heads built from a tapped feature's shape, and
forward passes stopped right after a layer (early-exit evaluation, latency, parameters run).

Nothing here rewrites the network: an exit is a module *name* (as in
``model.named_modules()``, ``"path@input"`` for the module's input), read with a forward
hook; a forward pass is cut short by an exception raised from such a hook, so the layers
after the exit never run. The network's modules, ``state_dict`` keys and output stay
exactly what they were.

An :class:`ExitHead` maps the exit's feature to ``(logits, hint)``: a bottleneck chosen by
the feature's rank from :data:`BOTTLENECKS` (``(B, D)``: linear-ReLU; ``(B, C, L)``: 3-wide
conv1d-BN-ReLU and global average pooling; ``(B, C, H, W)``: the same in 2-D), then a
linear *adaptation* to the size of the deepest feature (the hint ``F_i``, matched to it),
then a linear classifier on the hint (as the network's own classifier sits on its feature).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import first_tensor, to_outputs


def split_name(name: str) -> tuple[str, bool]:
    """``"layer2"`` -> ``("layer2", False)``; ``"fc@input"`` -> ``("fc", True)``."""
    path, _, which = name.partition("@")
    return path, which == "input"


def _bottleneck_vector(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, width), nn.ReLU())


def _bottleneck_conv1d(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(channels, width, 3, padding=1, bias=False),
                         nn.BatchNorm1d(width), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(1))


def _bottleneck_conv2d(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


#: Bottleneck builders ``(channels, width) -> module mapping to (B, width)``, by the rank of
#: the tapped feature (batch dimension included).
BOTTLENECKS: dict[int, Callable[[int, int], nn.Sequential]] = {
    2: _bottleneck_vector, 3: _bottleneck_conv1d, 4: _bottleneck_conv2d}


class ExitHead(nn.Module):
    """One exit: bottleneck -> ``adapt`` (the hint ``F_i``) -> ``classifier`` (the logits).

    Args:
        shape: the tapped feature's shape without the batch dimension, ``(D,)``,
            ``(C, L)`` or ``(C, H, W)``.
        hint_size: the size of the (flattened) deepest feature the hint is matched to.
        num_classes: K.
        width: the bottleneck's width (default: the feature's channels ``C`` or ``D``).
    """

    def __init__(self, shape: tuple[int, ...], hint_size: int, num_classes: int,
                 width: int | None = None) -> None:
        super().__init__()
        rank = len(shape) + 1
        if rank not in BOTTLENECKS:
            raise ShapeMismatchError(
                f"an exit head takes a feature of shape (B, D), (B, C, L) or (B, C, H, W); "
                f"this layer gives (B, {', '.join(map(str, shape))}); tap another layer")
        width = int(width or shape[0])
        self.bottleneck = BOTTLENECKS[rank](shape[0], width)
        self.adapt = nn.Linear(width, hint_size)
        self.classifier = nn.Linear(hint_size, num_classes)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        hint = self.adapt(self.bottleneck(feature))
        return self.classifier(hint), hint


class StopForward(Exception):
    """Raised from a hook to end a forward pass after an exit; carries the exit's feature."""

    def __init__(self, feature: Tensor) -> None:
        super().__init__("forward pass stopped at an exit")
        self.feature = feature


@contextmanager
def stopping_at(network: nn.Module, name: str):
    """While active, a forward pass of ``network`` raises :class:`StopForward` with the
    feature ``name`` as soon as it is computed (before the module for ``@input``)."""
    path, take_input = split_name(name)
    module = dict(network.named_modules())[path]

    def after(mod: nn.Module, inputs: Any, output: Any) -> None:
        raise StopForward(first_tensor(output))

    def before(mod: nn.Module, inputs: Any) -> None:
        raise StopForward(first_tensor(inputs))

    handle = (module.register_forward_pre_hook(before, prepend=True) if take_input
              else module.register_forward_hook(after))
    try:
        yield
    finally:
        handle.remove()


def run_until(network: nn.Module, name: str, x: Tensor) -> Tensor:
    """The feature ``name`` of ``network`` on ``x``; the layers after it do not run."""
    with stopping_at(network, name):
        try:
            network(x)
        except StopForward as stop:
            return stop.feature
    raise ConfigError(f"layer {name!r} did not run in the forward pass of "
                      f"{type(network).__name__}; exits must be on modules the forward calls")


def firing_order(network: nn.Module, names: Iterable[str], x: Tensor) -> list[tuple[str, Tensor]]:
    """``(name, feature)`` in the order the forward pass of ``network`` on ``x`` computes them
    (first computation of each), with the network's output last as ``("", logits)``."""
    seen: dict[str, Tensor] = {}
    modules = dict(network.named_modules())
    handles = []
    for name in names:
        path, take_input = split_name(name)

        def hook(mod, inputs, output, name=name, take_input=take_input) -> None:
            seen.setdefault(name, first_tensor(inputs if take_input else output))

        handles.append(modules[path].register_forward_hook(hook))
    try:
        logits = to_outputs(network(x)).logits
    finally:
        for handle in handles:
            handle.remove()
    return [*seen.items(), ("", logits)]


def parameters_run(network: nn.Module, name: str, x: Tensor) -> int:
    """Scalar parameters of the modules that the forward pass of ``network`` on ``x``
    enters before it reaches the feature ``name`` (shared ones counted once)."""
    entered: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda mod, inputs: entered.append(mod))
               for m in network.modules()]
    try:
        run_until(network, name, x)
    finally:
        for handle in handles:
            handle.remove()
    params = {id(p): p for m in entered for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in params.values())


class ExitModel(nn.Module):
    """``x -> logits`` of one exit: the network run up to the exit, then the exit's head
    (what an early-exit deployment runs). Holds the network and head, does not copy them."""

    def __init__(self, network: nn.Module, name: str, head: ExitHead) -> None:
        super().__init__()
        self.network, self.name, self.head = network, name, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(run_until(self.network, self.name, x))[0]


class ExitEnsemble(nn.Module):
    """``x -> log p`` with ``p`` the mean of the probabilities of every exit and the final
    classifier (the paper's "ensemble" of its classifiers); one full forward pass."""

    def __init__(self, network: nn.Module, names: list[str], heads: nn.ModuleList) -> None:
        super().__init__()
        self.network, self.names, self.heads = network, list(names), heads

    def forward(self, x: Tensor) -> Tensor:
        features = dict(firing_order(self.network, self.names, x))
        logits = [head(features[n])[0] for n, head in zip(self.names, self.heads, strict=True)]
        probs = torch.stack([z.float().softmax(-1) for z in [*logits, features[""]]])
        return probs.mean(0).clamp_min(1e-12).log()


__all__ = ["BOTTLENECKS", "ExitEnsemble", "ExitHead", "ExitModel", "StopForward",
           "firing_order", "parameters_run", "run_until", "split_name", "stopping_at"]
