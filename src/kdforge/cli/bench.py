"""``kdforge bench NAME``: each benchmark runs its spec and writes ``benchmarks/results/``."""

from __future__ import annotations

import argparse

from kdforge.cli.base import arguments, command, names, usage


def _grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="benchmarks/grid.yaml", help="grid definition")
    parser.add_argument("--results", default="benchmarks/results", help="where results go")
    parser.add_argument("--methods", help="comma-separated subset of the grid's methods")
    parser.add_argument("--pairs", help="comma-separated subset of the grid's pairs")
    parser.add_argument("--seeds", type=int, help="use only the first N seeds")
    parser.add_argument("--epochs", type=int, help="override every pair's epochs (smoke runs)")


@command("bench grid", "every method on every teacher/student pair",
         "kdforge bench grid --methods kd,dkd --pairs mnist1d_cnn --seeds 1")
@arguments(_grid_arguments)
def grid(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_grid import run_grid

    run_grid(args.grid, results=args.results, methods=names(args.methods),
             pairs=names(args.pairs), seeds=args.seeds, epochs=args.epochs)
    print(f"results: {args.results}/grid.md, {args.results}/grid.json")
    return 0


def _recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="benchmarks/recipes.yaml", help="experiment definition")
    parser.add_argument("--results", default="benchmarks/results", help="where results go")
    parser.add_argument("--epochs", help="comma-separated schedule lengths (default: the spec's)")
    parser.add_argument("--settings", help="comma-separated subset of the settings")
    parser.add_argument("--seeds", type=int, help="use only the first N seeds")


@command("bench recipes", "the teaching settings of Beyer et al. 2022 at several schedule "
         "lengths", "kdforge bench recipes --epochs 30,100 --settings consistent,fixed")
@arguments(_recipes_arguments)
def recipes(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_recipes import run_recipes

    try:
        epochs = [int(e) for e in names(args.epochs)] if args.epochs else None
    except ValueError:
        raise usage(f"--epochs takes comma-separated integers, e.g. 30,100; got "
                    f"{args.epochs!r}") from None
    run_recipes(args.spec, results=args.results, epochs=epochs, seeds=args.seeds,
                settings=names(args.settings))
    print(f"results: {args.results}/recipes.md, recipes.json, recipes.png")
    return 0


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default="benchmarks/store.yaml", help="experiment definition")
    parser.add_argument("--results", default="benchmarks/results", help="where results go")
    parser.add_argument("--epochs", type=int, help="override the students' epochs (smoke runs)")


@command("bench store", "a soft-label store (FKD) vs online KD and training alone: throughput, "
         "generation rate, bytes, accuracy", "kdforge bench store --epochs 2")
@arguments(_store_arguments)
def store(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_store import run_store_bench

    run_store_bench(args.spec, results=args.results, epochs=args.epochs)
    print(f"results: {args.results}/store.md, {args.results}/store.json")
    return 0


def _entries(name: str, subset: str, epochs: str):
    """Arguments of a benchmark over a spec's entries: spec, results, a subset, seeds,
    epochs, verbose."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--spec", default=f"benchmarks/{name}.yaml", help="benchmark spec")
        parser.add_argument("--results", default="benchmarks/results", help="where results go")
        parser.add_argument(subset, help="comma-separated subset of the spec's entries")
        parser.add_argument("--seeds", type=int, help="use only the first N seeds")
        parser.add_argument("--epochs", type=int, help=f"override {epochs} (smoke runs)")
        parser.add_argument("--verbose", action="store_true", help="show each run's progress")

    return add


@command("bench compress", "prune, int8 and ONNX on each model pair, fine-tuned without, with "
         "CE and with KD, over seeds", "kdforge bench compress --pairs mnist1d-cnn1d --seeds 1")
@arguments(_entries("compress", "--pairs", "the fine-tune epochs"))
def compress(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_compress import run_compress_bench

    run_compress_bench(args.spec, results=args.results, pairs=names(args.pairs),
                       seeds=args.seeds, epochs=args.epochs, verbose=args.verbose)
    print(f"results: {args.results}/compress.md, compress.json, compress.png")
    return 0


@command("bench schemes", "every scheme against the student alone and plain KD, over seeds",
         "kdforge bench schemes --schemes dml,byot --seeds 1")
@arguments(_entries("schemes", "--schemes", "every run's epochs"))
def schemes(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_schemes import run_schemes_bench

    run_schemes_bench(args.spec, results=args.results, schemes=names(args.schemes),
                      seeds=args.seeds, epochs=args.epochs, verbose=args.verbose)
    print(f"results: {args.results}/schemes.md, {args.results}/schemes.json")
    return 0
