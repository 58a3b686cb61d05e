"""The options of a registered data set: their defaults, their types and their old names.

A loader's keyword arguments are the data section's options (``data: {name: mnist1d,
num_samples: 8000}``). This module reads them off the loader's signature, so that:

* :func:`option_defaults` / :func:`describe_options` list them with their defaults
  (``kdforge list datasets``, :doc:`docs/data.md`);
* :func:`check_option_types` refuses a value of the wrong type (``root: null``, a number
  where a path goes) with a one-line :class:`~kdforge.core.errors.ConfigError` naming the
  option, what it takes and the value found, before the loader runs;
* :func:`renamed_options` marks options that were renamed (``@renamed_options({"seed":
  "draw_seed"})``); the old name fails with a message naming the new one.

The type check reads the loader's annotations: ``str``, ``int``, ``float``, ``bool``,
``os.PathLike``, ``Sequence[X]``, ``Mapping``, ``Literal[...]``, ``None`` and unions of
them. Anything else is not checked here (the loader checks it).
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from kdforge.core.errors import ConfigError

#: The default of an option that has none (it must be given).
REQUIRED = inspect.Parameter.empty
_RENAMED = "__kdforge_renamed_options__"

#: Why the generated data sets' ``seed`` option became ``draw_seed`` (said when the old
#: name is used): two different keys were called ``seed``.
DRAW_SEED_REASON = (
    "it seeds the generator that draws the data set's samples; the run's own seed "
    "(initialisation, data order) is the top-level 'seed'"
)


def renamed_options(
    old_to_new: dict[str, str], reason: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the loader's option ``old`` is now called ``new``; ``reason`` says why (the
    old name is refused with a message naming the new one, see :func:`check_renamed`)."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        renamed = dict(getattr(factory, _RENAMED, {}))
        renamed.update({old: (new, reason) for old, new in old_to_new.items()})
        setattr(factory, _RENAMED, renamed)
        return factory

    return decorate


def check_renamed(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """``ConfigError`` for an option given under a name the loader no longer takes."""
    for old, (new, reason) in getattr(factory, _RENAMED, {}).items():
        if old in options:
            why = f" ({reason})" if reason else ""
            raise ConfigError(
                f"dataset {name!r} option {old!r} was renamed {new!r}{why}: write "
                f"data.{new} instead of data.{old}"
            )


def _parameters(factory: Callable[..., Any]) -> list[inspect.Parameter]:
    params = inspect.signature(factory).parameters.values()
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def option_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """``{option: default}`` of a loader, in signature order; :data:`REQUIRED` if it has none."""
    return {p.name: p.default for p in _parameters(factory)}


def describe_options(factory: Callable[..., Any]) -> str:
    """``"root (required), test_fraction=0.2, image_size=None"``: a loader's options."""
    parts = []
    for key, default in option_defaults(factory).items():
        if default is REQUIRED:
            parts.append(f"{key} (required)")
        else:
            shown = list(default) if isinstance(default, tuple) else default
            parts.append(f"{key}={shown!r}" if isinstance(shown, str) else f"{key}={shown}")
    return ", ".join(parts) or "(no options)"


# -- type checks -----------------------------------------------------------------------------------


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # an annotation that cannot be resolved: the loader checks its values
        return {}


def _union_members(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; None where this module cannot tell (not checked)."""
    members = _union_members(hint)
    if members is not None:
        verdicts = [_matches(value, m) for m in members]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if hint is os.PathLike or origin is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (collections.abc.Sequence, list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) != 1:
            return None
        verdicts = [_matches(v, args[0]) for v in value]
        return False if any(v is False for v in verdicts) else True
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping)
    return None


def _describe_hint(hint: Any) -> str:
    members = _union_members(hint)
    if members is not None:
        return " or ".join(_describe_hint(m) for m in members)
    if hint is type(None) or hint is None:
        return "null"
    if hint is str:
        return "a string"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    origin = typing.get_origin(hint)
    if hint is os.PathLike or origin is os.PathLike:
        return "a path"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (collections.abc.Sequence, list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of ({_describe_hint(args[0])})" if len(args) == 1 else "a list"
    if origin in (collections.abc.Mapping, dict):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def check_option_types(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """``ConfigError`` naming the first option whose value does not fit its annotation.

    Unknown options are left to the caller (:func:`kdforge.core.registry.
    call_with_checked_kwargs` names them with the allowed ones).
    """
    hints = _hints(factory)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None or _matches(value, hint) is not False:
            continue
        default = option_defaults(factory).get(key, REQUIRED)
        wanted = _describe_hint(hint)
        fix = (f"set data.{key} to {wanted} (it has no default)" if default is REQUIRED
               else f"set data.{key} to {wanted}, or remove it for the default ({default!r})")
        raise ConfigError(
            f"dataset {name!r} option {key!r} must be {wanted}, got {value!r} "
            f"({type(value).__name__}); {fix}"
        )


__all__ = [
    "DRAW_SEED_REASON",
    "REQUIRED",
    "check_option_types",
    "check_renamed",
    "describe_options",
    "option_defaults",
    "renamed_options",
]
