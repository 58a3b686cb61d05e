"""``kdforge bench compress``: the compression pipeline on each model pair, over seeds.

For each pair of the spec (``benchmarks/compress.yaml``) the original model is trained once
(seed 0) from its run config, then the pair's compression config runs once per seed (the
seed drives the fine-tunes and the calibration sample; the original is shared). Every
pipeline is resumable and a finished one is read back, so an interrupted benchmark
continues where it stopped. Records are averaged over seeds per pair and stage (accuracies
get a ``_std``), and ``compress.json`` / ``.md`` / ``.png`` are written to the results folder;
the first pair listed is the headline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from kdforge.compress.config import CompressConfig
from kdforge.config import load_config
from kdforge.jobs.results import stat
from kdforge.jobs.specs import Section, read_spec


class PairSpec(Section):
    teacher: str = Field(description="run config of the original model")
    teacher_set: list[str] = Field(default_factory=list, description="its overrides")
    compress: str = Field(description="the compression config")
    set: list[str] = Field(default_factory=list, description="overrides of the compression")


class CompressBench(Section):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    work: str = Field("runs/bench-compress", description="where every run is kept")
    pairs: dict[str, PairSpec]


def run_compress_bench(spec_path: str | Path = "benchmarks/compress.yaml", *,
                       results: str | Path = "benchmarks/results",
                       pairs: list[str] | None = None, seeds: int | None = None,
                       epochs: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the benchmark; write ``compress.{json,md,png}``; return the JSON."""
    from kdforge.compress.pipeline import compress
    from kdforge.compress.report import write_report
    from kdforge.jobs.results import select
    from kdforge.stages import scheme_records

    spec = read_spec(spec_path, CompressBench, "compression benchmark",
                     "benchmarks/compress.yaml")
    work = Path(spec.work)
    chosen_seeds = spec.seeds[:seeds] if seeds else spec.seeds
    rows: list[dict[str, Any]] = []
    for name in select("pair", spec.pairs, pairs):
        pair = spec.pairs[name]
        teacher = load_config(pair.teacher, [*pair.teacher_set, f"name={name}-original",
                                             f"output_dir={work / 'originals'}"])
        original = scheme_records(teacher, verbose=verbose)[0]["run_dir"]
        extra = [f"finetune.epochs={epochs}"] if epochs else []
        per_seed = []
        for seed in chosen_seeds:
            cfg = load_config(pair.compress, [*pair.set, *extra, f"seed={seed}",
                                              f"name={name}-s{seed}", f"run={original}",
                                              f"output_dir={work}"], kind=CompressConfig)
            resume = (work / cfg.name / "config.yaml").is_file()
            per_seed.append(compress(cfg, resume=resume, verbose=verbose)["runs"])
        rows += _mean_rows(name, per_seed)
    out = {"spec": str(spec_path), "seeds": len(chosen_seeds), "runs": rows}
    write_report(Path(results), "compress", out)
    return out


def _mean_rows(pair: str, per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The seeds' records of each stage averaged: numbers by their mean (accuracies and
    agreements with a ``_std`` too), anything else from the first seed."""
    rows = []
    for records in zip(*per_seed, strict=True):
        row: dict[str, Any] = {"pair": pair, "seeds": len(records)}
        for key, value in records[0].items():
            if key in row:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                s = stat([r.get(key) for r in records])
                row[key] = s["mean"]
                if key.endswith(("_accuracy", "agreement")):
                    row[f"{key}_std"] = s["std"]
            else:
                row[key] = value
        rows.append(row)
    return rows


__all__ = ["CompressBench", "run_compress_bench"]
