"""One registry type for everything that configs name: models, losses, data sets, views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kdforge.core.errors import ConfigError, KDForgeError, unknown_name_message

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with the one-line description and source ``kdforge list`` prints."""

    name: str
    obj: T
    summary: str
    source: str


class Registry(Generic[T]):
    """Maps names to objects (classes or factories) for one kind of thing.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp", source="Rumelhart et al. 1986")
    ... def mlp(**kw): ...
    >>> MODELS.get("mlp")  # doctest: +ELLIPSIS
    <function mlp ...>
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, source: str = "", summary: str | None = None
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; the summary defaults to its docstring."""

        def decorate(obj: T) -> T:
            self.add(name, obj, source=source, summary=summary)
            return obj

        return decorate

    def register_named(self, name: str, *, source: str = "") -> Callable[[T], T]:
        """Class decorator: registers the class under ``name`` and sets its ``name``
        attribute (schemes, modalities: classes that know their registered name)."""

        def decorate(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            self.add(name, cls, source=source)
            return cls

        return decorate

    def add(self, name: str, obj: T, *, source: str = "", summary: str | None = None) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if summary is None:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            summary = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, summary, source)

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ``ConfigError`` naming close matches if none."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self.names())) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def call_with_checked_kwargs(kind: str, name: str, factory: Callable[..., Any], kwargs: dict) -> Any:
    """Call ``factory(**kwargs)`` after checking every key against its signature.

    An unknown key raises a ``ConfigError`` naming the key and the accepted ones, instead
    of Python's bare ``TypeError``.
    """
    import inspect

    target = factory.__init__ if inspect.isclass(factory) else factory
    params = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [
            p for p, v in params.items()
            if p != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
        ]
        for key in kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"{kind} {name!r} has no option {key!r}; allowed options: "
                    + (", ".join(allowed) or "(none)")
                )
    try:
        return factory(**kwargs)
    except KDForgeError:
        raise
    except (TypeError, ValueError, OverflowError) as err:  # an option of the wrong type/range
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"{kind} {name!r} cannot take the options {shown or '(none)'}: {err}; "
                          "give each option a value of the type and range it documents"
                          ) from None
