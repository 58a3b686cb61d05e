"""Run a scheme that is a sequence of runs: every stage in its own directory, resumable.

``kdforge train CONFIG`` with a sequence scheme (``takd``, ``ban``, ``specialists``,
``lwf``...) lands here. The scheme derives one run config per stage; the
:class:`StageRunner` trains each in ``output_dir/name/STAGE/``, resumes a stage that was
interrupted (it has a checkpoint), and reads back a stage that finished (it has a
``summary.json`` written for the same config). Running the same command again after a
crash therefore continues where it stopped and loses no finished stage. The records the
scheme returns go to ``output_dir/name/scheme.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kdforge import api
from kdforge.config import RunConfig, load_config
from kdforge.core.errors import ConfigError
from kdforge.core.faults import fault_point
from kdforge.core.files import read_json, remove_temporaries, write_json, write_text
from kdforge.engine import distributed
from kdforge.engine.checkpoint import CHECKPOINT
from kdforge.schemes import RunData, StageResult, build_scheme, record_of

SCHEME_FILE = "scheme.json"


class StageRunner:
    """Trains, resumes or reads back the stages of one sequence under ``root``."""

    def __init__(self, root: Path, *, verbose: bool = True) -> None:
        self.root = Path(root)
        self.verbose = verbose

    def stage(self, cfg: RunConfig) -> StageResult:
        fault_point("stage")  # between two stages (KDFORGE_FAULT=stage:N; else free)
        cfg = cfg.model_copy(update={"output_dir": str(self.root)})
        run_dir = self.root / cfg.name
        written = run_dir / api.CONFIG_FILE
        if written.is_file():
            if load_config(written, relative_to_file=False).to_yaml() != cfg.to_yaml():
                raise ConfigError(
                    f"stage directory {str(run_dir)!r} holds a run of another config; the "
                    "scheme's settings changed since it ran: rerun with --overwrite (starts "
                    "the whole scheme again) or choose another name (--set name=...)")
            if (run_dir / api.SUMMARY_FILE).is_file():
                return StageResult(run_dir, api.load_run_summary(run_dir))
            if (run_dir / CHECKPOINT).is_file():
                result = api.train(cfg, resume=True, verbose=self.verbose)
                return StageResult(result.run_dir, result.summary)
        result = api.train(cfg, overwrite=True, verbose=self.verbose)
        return StageResult(result.run_dir, result.summary)

    def data(self, cfg: RunConfig) -> RunData:
        return api.build_data(cfg)


def run_sequence(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 verbose: bool = True) -> api.RunResult:
    """Run every stage of ``cfg``'s sequence scheme; return the records as the summary."""
    assert cfg.scheme is not None
    scheme = build_scheme(cfg.scheme)
    root = api.run_dir_of(cfg)
    stored = root / api.CONFIG_FILE
    main = distributed.env_from_torchrun().is_main
    if stored.is_file() and not resume and not overwrite:
        if load_config(stored, relative_to_file=False).to_yaml() != cfg.to_yaml():
            raise ConfigError(
                f"{str(root)!r} holds a scheme run of another config; continue it with "
                f"--resume {root}, choose another name (--set name=...), or --overwrite")
    if overwrite and root.exists() and main:
        shutil.rmtree(root)
    scheme.check(cfg)  # before anything is written: a refused config leaves no directory
    fresh = not root.exists()
    if main:
        root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(root)  # what a killed write of scheme.json / config.yaml left
        write_text(stored, cfg.to_yaml())
    try:
        records = scheme.run(cfg, StageRunner(root, verbose=verbose))
    except ConfigError:
        if fresh and main and [p.name for p in root.iterdir()] == [api.CONFIG_FILE]:
            shutil.rmtree(root)  # refused before its first stage: leave nothing behind
        raise
    summary: dict[str, Any] = {"name": cfg.name, "scheme": scheme.name, "records": records}
    if main:
        write_json(root / SCHEME_FILE, summary)
    return api.RunResult(root, summary)


def scheme_records(cfg: RunConfig, *, verbose: bool = True) -> list[dict[str, Any]]:
    """The records of ``cfg``'s scheme (a plain run counts as one record), training only
    what has not finished: a benchmark calls this again after an interruption for free."""
    if cfg.scheme is not None and build_scheme(cfg.scheme).sequence:
        return run_sequence(cfg, resume=True, verbose=verbose).summary["records"]
    result = StageRunner(Path(cfg.output_dir), verbose=verbose).stage(cfg)
    if "records" in result.summary:
        return result.summary["records"]
    return [record_of(result, cfg.student.name, cfg.student.options)]


def load_scheme_result(root: str | Path) -> dict[str, Any]:
    path = Path(root) / SCHEME_FILE
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist; the scheme has not finished")
    return read_json(path, "scheme result", "rerun the scheme with --overwrite")


__all__ = ["SCHEME_FILE", "StageRunner", "load_scheme_result", "run_sequence",
           "scheme_records"]
