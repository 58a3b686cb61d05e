"""Intermediate features by module path, without rewriting the model.

A ``FeatureTap`` puts forward hooks on modules named as in ``model.named_modules()`` and
keeps the latest output of each. Works on any unmodified ``nn.Module`` (our zoo, timm,
torchvision, your own).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdforge.core.errors import ConfigError, unknown_name_message
from kdforge.core.outputs import first_tensor


class FeatureTap:
    """Collects the outputs of named submodules on every forward pass.

    >>> tap = FeatureTap(model, ["layer2", "layer3"])   # doctest: +SKIP
    >>> logits = model(x); feats = tap.pop()           # {"layer2": ..., "layer3": ...}

    Args:
        model: any ``nn.Module``.
        names: module paths as in ``model.named_modules()``. A wrong name raises
            ``ConfigError`` listing the closest valid names. ``"path@input"`` collects the
            module's (first) input instead of its output, e.g. the pre-activation that enters
            a block's final ReLU: ``"layer3.0.relu@input"``.

    The hooks stay until :meth:`remove` (or the end of a ``with`` block). Features keep
    their autograd graph, so a loss on a student feature back-propagates into the student.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] = (), *, role: str = "") -> None:
        self.model = model
        self.role = role  # "student", "teacher": named in errors (both may be one class)
        self.names: list[str] = []
        self._modules = dict(model.named_modules())
        self._handles: list = []
        self._store: dict[str, Tensor] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        """Start collecting the output of module ``name`` (no-op if already tapped)."""
        if name in self.names:
            return
        path, _, which = name.partition("@")
        if which not in ("", "input", "output"):
            raise ConfigError(f"layer {name!r}: the part after '@' must be 'input' or 'output'")
        if path not in self._modules or path == "":
            valid = [n for n in self._modules if n]
            raise ConfigError(
                unknown_name_message(f"layer of {self._whose()}", path, valid)
                + ". Layer names are those of model.named_modules(); "
                "`kdforge list layers MODEL` prints them."
            )
        module = self._modules[path]
        self._handles.append(module.register_forward_hook(self._hook(name, which == "input")))
        self.names.append(name)

    def _whose(self) -> str:
        kind = type(self.model).__name__
        return f"the {self.role} ({kind})" if self.role else kind

    def _hook(self, name: str, take_input: bool):
        def hook(module: nn.Module, inputs, output) -> None:
            self._store[name] = first_tensor(inputs if take_input else output)

        return hook

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; clears the store (no stale features)."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise ConfigError(
                f"layers {missing} were tapped but did not run in the forward pass of "
                f"{type(self.model).__name__}; tap modules that the forward pass calls"
            )
        out, self._store = self._store, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()
        self.names.clear()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
