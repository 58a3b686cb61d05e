"""What the benchmarks share: reusing finished runs, statistics over seeds, the result files.

A run whose directory already holds a finished run of exactly the same config is reused
(:func:`finished_run`), so an interrupted benchmark resumes where it stopped. Results are
written as ``STEM.json`` and ``STEM.md`` into one folder (:func:`write_results`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdforge import api
from kdforge.core.errors import ConfigError
from kdforge.report.tables import mean_std

#: The test metrics every benchmark run reports (``summary["test"][name]``).
GRID_METRICS = ("accuracy", "agreement", "kl")


def finished_run(cfg: Any) -> api.RunResult | None:
    """A run of exactly this config that already finished (benchmarks resume for free)."""
    run_dir = api.run_dir_of(cfg)
    summary, config = run_dir / api.SUMMARY_FILE, run_dir / api.CONFIG_FILE
    if summary.is_file() and same_config(config, cfg):
        return api.RunResult(run_dir, json.loads(summary.read_text()))
    return None


def same_config(path: Path, cfg: Any) -> bool:
    """Whether the run config file ``path`` holds ``cfg`` (compared as data: the order of
    keys, as a YAML file happened to write them, does not matter)."""
    if not path.is_file():
        return False
    try:
        return yaml.safe_load(path.read_text()) == yaml.safe_load(cfg.to_yaml())
    except yaml.YAMLError:
        return False


def write_results(results: str | Path, stem: str, out: dict[str, Any], markdown: str) -> Path:
    """Write a benchmark's ``STEM.json`` and ``STEM.md`` into ``results``; returns the folder."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown)
    return results


def select(kind: str, available: dict, chosen: Sequence[str] | None) -> list[str]:
    """The names ``chosen`` (all of ``available`` when None or empty), checked to exist."""
    if not chosen:
        return list(available)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ConfigError(f"unknown {kind}(s) {unknown}; the grid has {list(available)}")
    return list(chosen)


def stat(values: list[float | None]) -> dict[str, Any]:
    """JSON-safe mean, standard deviation and count of the values that are not None."""
    mean, std, n = mean_std([v for v in values if v is not None])
    return {"mean": mean if n else None, "std": std if n else None, "n": n}


def pm(measured: dict[str, Any], scale: float, decimals: int) -> str:
    """``"mean ± std"`` of a :func:`stat` (times ``scale``); ``"-"`` where nothing was measured."""
    mean = measured.get("mean") if measured else None
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if measured["n"] == 1:
        return f"{mean * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f} ± {measured['std'] * scale:.{decimals}f}"


__all__ = ["GRID_METRICS", "finished_run", "pm", "same_config", "select", "stat",
           "write_results"]
