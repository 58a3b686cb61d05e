"""Find run directories and read what they hold (files only: nothing of training).

A directory is a *run* of one of these kinds, by the files it holds:

- ``run``: a training run (``summary.json`` when it finished; ``metrics.jsonl`` and
  ``config.yaml`` while it is unfinished; ``predictions.safetensors`` when a kdforge that
  writes them ran it);
- ``scheme``: the root of a sequence scheme (``scheme.json``; its stages are runs below it);
- ``compress``: the root of a compression pipeline (``compress.json``);

a compression stage directory (``stage.json``) belongs to its pipeline and is not a run of
its own. Runs that differ only in ``seed``, ``name`` and ``output_dir`` (the ``--seeds``
runs, ``NAME-seedS``) form one *group*: a path holding the run's own ``seed{S}`` (a teacher
per seed) counts as the same value for every seed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdforge.core.errors import ConfigError

SUMMARY, METRICS, CONFIG = "summary.json", "metrics.jsonl", "config.yaml"
SCHEME, COMPRESS, STAGE = "scheme.json", "compress.json", "stage.json"
PREDICTIONS = "predictions.safetensors"
#: files that make a directory a run
MARKERS = (SUMMARY, METRICS, CONFIG, SCHEME, COMPRESS)
#: config keys that do not make two runs different settings
IGNORED_KEYS = ("seed", "name", "output_dir")
#: directories never searched for runs
SKIPPED_DIRS = {"tensorboard", "report", "__pycache__", "checkpoints"}
_SEED_SUFFIX = re.compile(r"-seed\d+$")


@dataclass
class RunInfo:
    """What the report knows of one run directory."""

    path: Path
    kind: str  # "run", "scheme" or "compress"
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # scheme / compress records
    problems: list[str] = field(default_factory=list)  # files that could not be read

    @property
    def seed(self) -> Any:
        return self.config.get("seed", (self.summary or {}).get("seed"))

    @property
    def finished(self) -> bool:
        return self.summary is not None or bool(self.records)

    @property
    def test(self) -> dict[str, Any]:
        return (self.summary or {}).get("test") or {}

    @property
    def has_predictions(self) -> bool:
        return (self.path / PREDICTIONS).is_file()


@dataclass
class Group:
    """Runs of one setting (one config apart from seed and name)."""

    label: str
    runs: list[RunInfo]
    key: str = ""

    @property
    def kind(self) -> str:
        return self.runs[0].kind


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not (path / STAGE).is_file() and any(
        (path / m).is_file() for m in MARKERS)


def find_runs(paths: Sequence[str | os.PathLike], max_depth: int = 8) -> list[Path]:
    """Every run directory given or below the ``paths`` (in order, each once; hidden
    folders, ``tensorboard/`` and ``report/`` folders are skipped; links are not followed)."""
    found: list[Path] = []
    for given in paths:
        root = Path(given)
        try:
            is_dir = root.is_dir()
        except OSError as exc:  # e.g. a name too long for the file system
            raise ConfigError(f"{str(root)[:200]!r} cannot be read as a directory: "
                              f"{exc.strerror}") from None
        if not is_dir:
            raise ConfigError(f"{str(root)!r} is not a directory; give run directories or a "
                              "directory that holds them")
        for path in _walk(root, max_depth):
            if path not in found:
                found.append(path)
    return found


def _walk(root: Path, depth: int) -> Iterable[Path]:
    if is_run_dir(root):
        yield root
    if depth <= 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name.startswith(".") or child.name in SKIPPED_DIRS:
            continue
        yield from _walk(child, depth - 1)


def load_run(path: str | os.PathLike) -> RunInfo:
    """Read a run directory; a file that cannot be read is noted in ``problems``."""
    path = Path(path)
    info = RunInfo(path, "run", path.name)
    info.config = _read(info, CONFIG, _yaml_mapping) or {}
    if (path / SCHEME).is_file():
        info.kind = "scheme"
        scheme = _read(info, SCHEME, _json) or {}
        info.records = [r for r in scheme.get("records", []) if isinstance(r, dict)]
    elif (path / COMPRESS).is_file():
        info.kind = "compress"
        out = _read(info, COMPRESS, _json) or {}
        info.records = [r for r in out.get("runs", []) if isinstance(r, dict)]
    if (path / SUMMARY).is_file():
        summary = _read(info, SUMMARY, _json)
        info.summary = summary if isinstance(summary, dict) else None
    if (path / METRICS).is_file():
        info.metrics = _read(info, METRICS, _jsonl) or []
    info.name = str(info.config.get("name") or (info.summary or {}).get("name") or path.name)
    return info


def _read(info: RunInfo, name: str, parse) -> Any:
    file = info.path / name
    if not file.is_file():
        return None
    try:
        return parse(file)
    except (OSError, ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        info.problems.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return None


def _yaml_mapping(file: Path) -> dict[str, Any]:
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return data


def _json(file: Path) -> Any:
    return json.loads(file.read_text())


def _jsonl(file: Path) -> list[dict[str, Any]]:
    out = []
    for line in file.read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: the records before it still count
            if isinstance(record, dict):
                out.append(record)
    return out


def setting_key(info: RunInfo) -> str:
    """The run's config without seed, name and output_dir, as canonical JSON (a run's own
    ``seed{S}`` in strings written as ``seed{seed}``); a run with no config is its own."""
    if not info.config:
        return f"path:{info.path}"
    seed = info.seed
    pattern = re.compile(rf"seed{seed}(?!\d)") if isinstance(seed, int) else None

    def norm(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {str(k): norm(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [norm(v) for v in obj]
        if isinstance(obj, str) and pattern is not None:
            return pattern.sub("seed{seed}", obj)
        return obj

    data = {k: v for k, v in info.config.items() if k not in IGNORED_KEYS}
    return info.kind + ":" + json.dumps(norm(data), sort_keys=True, default=str)


def group_runs(runs: Sequence[RunInfo]) -> list[Group]:
    """Runs grouped by :func:`setting_key`, in the order of their first run; a group's
    label is its first run's name without ``-seedS`` (made unique)."""
    groups: dict[str, Group] = {}
    for info in runs:
        key = setting_key(info)
        if key not in groups:
            groups[key] = Group(_SEED_SUFFIX.sub("", info.name), [], key)
        groups[key].runs.append(info)
    labels: dict[str, int] = {}
    for group in groups.values():
        n = labels.get(group.label, 0)
        labels[group.label] = n + 1
        if n:
            group.label = f"{group.label} ({n + 1})"
    for group in groups.values():
        group.runs.sort(key=lambda r: (r.seed if isinstance(r.seed, int) else 1 << 30, r.name))
    return list(groups.values())


def read_predictions(path: str | os.PathLike) -> dict[str, Any] | None:
    """``predictions.safetensors`` as float32 / int64 numpy arrays (plus ``classes``), or
    ``None`` when the run has none or it cannot be read."""
    file = Path(path) / PREDICTIONS
    if not file.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="numpy") as f:
            out: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = f.metadata() or {}
    except Exception:  # a truncated or foreign file: the report says it has none
        return None
    if "student" not in out or "targets" not in out:
        return None
    result: dict[str, Any] = {k: np.asarray(v, dtype=np.int64 if k == "targets" else np.float32)
                              for k, v in out.items()}
    try:
        result["classes"] = json.loads(meta["classes"]) if "classes" in meta else None
    except ValueError:
        result["classes"] = None
    return result


__all__ = ["Group", "RunInfo", "find_runs", "group_runs", "is_run_dir", "load_run",
           "read_predictions", "setting_key"]
