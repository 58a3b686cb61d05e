"""One config over several seeds: ``kdforge train CONFIG --seeds 0,1,2``.

A study repeats every run over seeds. Each seed's run is the config with ``seed`` set, its
name suffixed ``-seedS`` (its own run directory) and every ``{seed}`` in the config's
strings replaced by the seed, so a teacher path ``runs/teacher-seed{seed}`` gives each
student the teacher of its own seed while a path without ``{seed}`` is shared by all. A
seed whose run already finished with exactly this config is reused and one that was
interrupted is resumed, so rerunning the command continues a study. The summary (test
metrics of every seed, their mean and standard deviation) is written to
``OUTPUT_DIR/NAME-seeds.json`` and printed as a table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kdforge import api
from kdforge.config import RunConfig, parse_config
from kdforge.core.errors import ConfigError
from kdforge.core.files import write_json
from kdforge.engine.checkpoint import CHECKPOINT
from kdforge.jobs.results import finished_run, same_config, stat

PLACEHOLDER = "{seed}"
#: the test metrics summarised over seeds (those a run reports)
METRICS = ("accuracy", "agreement", "agreement_top5", "kl", "ece", "nll")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` or a mix (``"0-2,7"``) -> the seeds, in order, each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a seed or a range; give e.g. "
                              "0,1,2 or 0-4")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise ConfigError(f"--seeds {text!r}: the range {part!r} runs backwards")
        seeds.extend(s for s in range(lo, hi + 1) if s not in seeds)
    if len(seeds) > 1000:
        raise ConfigError(f"--seeds {text!r} names {len(seeds)} seeds; at most 1000")
    return seeds


def seeded(cfg: RunConfig, seed: int, name: str | None = None) -> RunConfig:
    """``cfg`` with ``seed``, ``name`` (if given) and every ``{seed}`` replaced."""
    data = _replace(cfg.to_dict(), str(seed))
    data["seed"] = seed
    if name is not None:
        data["name"] = name
    return parse_config(data)


def has_placeholder(cfg: RunConfig) -> bool:
    return PLACEHOLDER in cfg.to_yaml()


def run_seeds(cfg: RunConfig, seeds: list[int], *, overwrite: bool = False,
              verbose: bool = True) -> dict[str, Any]:
    """Train ``cfg`` once per seed; returns (and writes) the study's summary."""
    if not seeds:
        raise ConfigError("--seeds names no seed")
    runs = []
    for seed in seeds:
        one = seeded(cfg, seed, f"{cfg.name}-seed{seed}")
        run_dir = api.run_dir_of(one)
        result = None if overwrite else _continue(one, run_dir, verbose)
        if result is None:
            result = api.train(one, overwrite=overwrite, verbose=verbose)
        test = result.summary.get("test", {})
        runs.append({"seed": seed, "run_dir": str(result.run_dir),
                     **{k: test[k] for k in METRICS if k in test}})
    study = {"name": cfg.name, "seeds": seeds, "runs": runs,
             **{k: stat([r.get(k) for r in runs]) for k in METRICS
                if any(k in r for r in runs)}}
    write_json(Path(cfg.output_dir) / f"{cfg.name}-seeds.json", study)
    return study


def _continue(cfg: RunConfig, run_dir: Path, verbose: bool) -> api.RunResult | None:
    """The seed's finished run (reused), its interrupted run (resumed), or None (train it).
    A run directory that holds a run of another config is refused, never overwritten."""
    done = finished_run(cfg)
    if done is not None:
        return done
    if not (run_dir / CHECKPOINT).is_file():
        return None
    if same_config(run_dir / api.CONFIG_FILE, cfg):
        return api.resume(run_dir, verbose=verbose)
    raise ConfigError(f"run directory {str(run_dir)!r} holds a run of another config; choose "
                      "another name (--set name=...) or pass --overwrite to train it again")


def seeds_table(study: dict[str, Any]) -> str:
    """The study as a Markdown table: one row per seed, then mean ± std."""
    metrics = [k for k in METRICS if k in study]
    pct = {"accuracy", "agreement", "agreement_top5"}

    def cell(k: str, v: float | None) -> str:
        return "-" if v is None else (f"{100 * v:.2f}" if k in pct else f"{v:.4f}")

    lines = [f"{study['name']} over seeds {study['seeds']} (accuracy, agreement in %):", "",
             "| seed | " + " | ".join(metrics) + " | run |",
             "|---|" + "---|" * len(metrics) + "---|"]
    for r in study["runs"]:
        lines.append(f"| {r['seed']} | " + " | ".join(cell(k, r.get(k)) for k in metrics)
                     + f" | {r['run_dir']} |")
    means = []
    for k in metrics:
        s = study[k]
        means.append("-" if s["mean"] is None else
                     f"{cell(k, s['mean'])} ± {cell(k, s['std'])}")
    lines.append("| mean ± std | " + " | ".join(means) + " | |")
    return "\n".join(lines)


def _replace(obj: Any, seed: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(PLACEHOLDER, seed)
    if isinstance(obj, dict):
        return {k: _replace(v, seed) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, seed) for v in obj]
    return obj


__all__ = ["has_placeholder", "parse_seeds", "run_seeds", "seeded", "seeds_table"]
