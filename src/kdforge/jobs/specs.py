"""Benchmark specs (``benchmarks/*.yaml``) read and validated by pydantic models.

:func:`read_spec` turns every problem into one :class:`~kdforge.core.errors.ConfigError`
with a line per problem naming the dotted key (``pairs.tiny.epochs``), what is wrong and, for
an unknown key, the keys allowed where it stands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from kdforge.config_yaml import read_yaml_mapping
from kdforge.core.errors import ConfigError

SpecT = TypeVar("SpecT", bound=BaseModel)


class Section(BaseModel):
    """A part of a spec: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def read_spec(path: str | Path, model: type[SpecT], what: str, example: str) -> SpecT:
    """Read the YAML file ``path`` and validate it as ``model``.

    ``what`` names the file in messages (``"grid file"``), ``example`` the shipped one
    (``"benchmarks/grid.yaml"``).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, f"{what} {str(path)!r} does not exist (see {example})",
                            f"{path}: a {what} holds a mapping of keys (see {example})")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {what}:\n  "
                          + "\n  ".join(problems(exc, model))) from None


def problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_holder(root, loc[:-1]).model_fields)
            lines.append(f"{key}: unknown key; allowed keys here: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return list(dict.fromkeys(lines))


def _holder(root: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    """The model whose fields stand at ``loc`` (through ``dict[str, M]`` and ``list[M]``)."""
    current: Any = root
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                break
            current = field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            break
    return current if isinstance(current, type) and issubclass(current, BaseModel) else root


__all__ = ["Section", "problems", "read_spec"]
