"""Relative paths in a config file are relative to the file, not to the current directory.

A config names other files: its teacher's run directory or weights, a soft-label store,
a data set's files, where its own run goes. Read relative to the current directory, the
shipped configs worked only from the repository root. :func:`resolve_paths` rewrites every
relative path *written in a config file* against the file's directory before the config is
validated; values given on the command line (``--set key=value``) keep the current
directory, as any path typed at a shell does. Absolute paths, ``~`` (expanded) and empty
values are left as they are.

Where paths are is declared per config kind as patterns: ``teacher[].run`` is the ``run``
key of the teacher section, or of each teacher when ``teacher`` is a list.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_TEACHER = ("teacher[].run", "teacher[].weights", "teacher[].store", "teacher[].init")
_DATA = ("data.root", "data.test_root", "data.val_root", "data.train[]", "data.val[]",
         "data.test[]")

#: config kind (class name) -> the paths its files may hold
PATHS: dict[str, tuple[str, ...]] = {
    "RunConfig": ("output_dir", "student.weights", "student.init", *_TEACHER, *_DATA,
                  "eval_teacher.run", "eval_teacher.weights",
                  "scheme.old_run", "scheme.warm_start", "scheme.specialist_runs[]",
                  "scheme.synthesized[]", "scheme.sets[]", "scheme.extra[]"),
    "SoftLabelConfig": ("output_dir", *_TEACHER, *_DATA, "store.views_from"),
    "CompressConfig": ("output_dir", "run"),
}


def resolve_paths(data: dict[str, Any], kind: str, base: str | os.PathLike) -> dict[str, Any]:
    """``data`` (a config file's mapping, changed in place and returned) with the relative
    paths of config kind ``kind`` made relative to the directory ``base``."""
    for pattern in PATHS.get(kind, ()):
        _resolve(data, pattern.split("."), Path(base))
    return data


def _resolve(node: Any, parts: list[str], base: Path) -> None:
    head, rest = parts[0], parts[1:]
    many = head.endswith("[]")
    key = head[:-2] if many else head
    if not isinstance(node, dict) or key not in node:
        return
    if not rest:
        node[key] = _each(node[key], base) if many else _one(node[key], base)
        return
    child = node[key]
    for item in (child if many and isinstance(child, list) else [child]):
        _resolve(item, rest, base)


def _each(value: Any, base: Path) -> Any:
    return [_one(v, base) for v in value] if isinstance(value, list) else _one(value, base)


def _one(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value.strip():
        return value  # not a path (validation reports wrong types)
    path = Path(value).expanduser()
    return str(path) if path.is_absolute() else os.path.abspath(base / path)


def patterns(kind: str) -> Iterable[str]:
    """The path patterns of a config kind (for the docs)."""
    return PATHS.get(kind, ())


__all__ = ["PATHS", "patterns", "resolve_paths"]
