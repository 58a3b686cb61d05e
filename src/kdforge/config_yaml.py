"""Reading a config's YAML and applying ``--set key=value`` overrides, safely.

YAML is read with the safe loader only (no tag builds a Python object), and what it holds
must be plain data: mappings with string keys, lists, strings, numbers, booleans and null
(:func:`check_plain` also refuses alias cycles and alias blow-ups). Overrides address any
value by its dotted path, list items by index (``losses.1.T=2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdforge.core.errors import ConfigError


def read_yaml_mapping(path: Path, missing: str, not_mapping: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (safe loader); ``ConfigError`` with ``missing``
    when there is no file, ``not_mapping`` (plus what was found) when it holds no mapping."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text (a binary file)
        raise ConfigError(f"cannot read {path} as a YAML text file ({exc}); give a YAML "
                          "config file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{not_mapping}, got {type(data).__name__}")
    check_plain(data, str(path))
    return data


#: the most values (after YAML aliases are expanded) a config may hold
MAX_CONFIG_VALUES = 100_000
_PLAIN = (str, int, float, bool, type(None))


def check_plain(data: Any, where: str) -> None:
    """Refuse a config tree that is not plain data: values other than strings, numbers,
    booleans, null, lists and mappings (YAML's ``!!binary``, ``!!set``, timestamps), YAML
    aliases that make a cycle (``a: &x [*x]``) or expand past :data:`MAX_CONFIG_VALUES`
    values ("billion laughs"); each would hang, overflow the stack or fail when the run
    writes its ``config.yaml``. ``where`` names the file or the source in the message."""
    stack: list[tuple[Any, str, frozenset[int]]] = [(data, "", frozenset())]
    seen = 0
    while stack:
        node, key, above = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_CONFIG_VALUES} values once its "
                              "YAML aliases are expanded; a config is far smaller: remove the "
                              "aliases that repeat each other")
        if isinstance(node, _PLAIN):
            continue
        if not isinstance(node, (dict, list, tuple)):
            raise ConfigError(f"{where}: {key or '(top level)'} holds a {type(node).__name__} "
                              f"({str(node)[:40]!r}); a config holds strings, numbers, booleans, "
                              "null, lists and mappings only: quote the value to make it a "
                              "string")
        if id(node) in above:
            raise ConfigError(f"{where}: {key or '(top level)'} is a YAML alias of a value that "
                              "contains it (a cycle); write the value out instead of the alias")
        inner = above | {id(node)}
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, child in items:
            if not isinstance(k, _PLAIN):
                raise ConfigError(f"{where}: {key or '(top level)'} has a key of type "
                                  f"{type(k).__name__} ({str(k)[:40]!r}); keys are names: "
                                  "quote it")
            stack.append((child, f"{key}.{k}" if key else str(k), inner))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``losses.1.T=2``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. train.epochs=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]), create=True)
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, key)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:-1])!r} is not a section")


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set below {path!r}: it is a value, not a section")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _index(node: list, part: str, path: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{path!r}: list index {part!r} out of range (list has {len(node)} items)")
    return int(part)


def deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [deep_copy(v) for v in obj]
    return obj


__all__ = ["MAX_CONFIG_VALUES", "apply_override", "check_plain", "deep_copy",
           "read_yaml_mapping"]
