"""Transitional: the benchmarks moved to :mod:`kdforge.jobs` (``bench_grid``, ``bench_recipes``,
``results``). Delete this module once nothing imports ``kdforge.bench`` any more."""

from kdforge.jobs.bench_grid import NotApplicable, resolve_layers, run_grid
from kdforge.jobs.bench_recipes import run_recipes
from kdforge.jobs.results import finished_run, write_results

__all__ = ["NotApplicable", "finished_run", "resolve_layers", "run_grid", "run_recipes",
           "write_results"]
