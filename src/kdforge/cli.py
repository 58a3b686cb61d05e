"""The ``kdforge`` command line: parses, validates, calls :mod:`kdforge.api`; nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kdforge.core.errors import KDForgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdforge",
        description="Knowledge distillation for PyTorch: train teachers, distill students.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _list_parser(sub)
    _run_parsers(sub)
    sl = sub.add_parser("soft-labels", help="run the teacher once over many views and store "
                        "the soft labels (FKD)")
    sl.add_argument("config", help="YAML soft-label config")
    sl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. store.views_per_sample=50")
    sl.add_argument("--quiet", action="store_true")
    cp = sub.add_parser("compress", help="prune, quantize and export a trained run, each "
                        "stage fine-tuned by distillation from the original")
    cp.add_argument("config", help="YAML compression config (configs/compress/)")
    cp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. finetune.epochs=3")
    cp.add_argument("--resume", action="store_true", help="continue the pipeline at its first "
                    "unfinished stage")
    cp.add_argument("--overwrite", action="store_true", help="start the pipeline again")
    cp.add_argument("--quiet", action="store_true", help="no progress output")
    ev = sub.add_parser("evaluate", help="evaluate a finished run's model")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=["test", "val"], default="test")
    _bench_parsers(sub)
    demo = sub.add_parser("demo", help="train teachers and distill students on bundled data")
    demo.add_argument("--output", default="runs/demo", help="where runs, table and plots go")
    demo.add_argument("--quick", action="store_true", help="a tiny version (smoke test)")
    demo.add_argument("--seeds", type=int, default=3, help="seeds per student setting")
    return p


def _list_parser(sub) -> None:
    ls = sub.add_parser("list", help="print what is registered (models, losses, datasets, views, "
                                     "schemes, modalities, optimizers, schedules, layer-types) or a "
                                     "model's layers")
    ls.add_argument("kind", choices=["models", "losses", "datasets", "views", "schemes",
                                     "modalities", "optimizers", "schedules", "layer-types",
                                     "layers"])
    ls.add_argument("model", nargs="?", help="with 'layers': the model whose layers to print")
    ls.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="with 'layers': num_classes=N, input_shape=[C,H,W] or a model option")


def _run_parsers(sub) -> None:
    for name, text in (("train", "train a model (a teacher, a student alone, or a scheme: "
                                 "kdforge list schemes)"),
                       ("distill", "distill a student from the config's teacher")):
        run = sub.add_parser(name, help=text)
        run.add_argument("config", nargs="?", help="YAML run config")
        run.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5")
        run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
        run.add_argument("--overwrite", action="store_true",
                         help="replace an existing run directory of the same name")
        run.add_argument("--quiet", action="store_true", help="no progress output")


def _bench_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and write its results to files")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    grid = bench_sub.add_parser("grid", help="every method on every teacher/student pair")
    grid.add_argument("--grid", default="benchmarks/grid.yaml", help="grid definition")
    grid.add_argument("--results", default="benchmarks/results", help="where results go")
    grid.add_argument("--methods", help="comma-separated subset of the grid's methods")
    grid.add_argument("--pairs", help="comma-separated subset of the grid's pairs")
    grid.add_argument("--seeds", type=int, help="use only the first N seeds")
    grid.add_argument("--epochs", type=int, help="override every pair's epochs (smoke runs)")

    recipes = bench_sub.add_parser("recipes", help="the four teaching settings of Beyer et al. "
                                   "2022 at several schedule lengths")
    recipes.add_argument("--spec", default="benchmarks/recipes.yaml", help="experiment definition")
    recipes.add_argument("--results", default="benchmarks/results", help="where results go")
    recipes.add_argument("--epochs", help="comma-separated schedule lengths (default: the spec's)")
    recipes.add_argument("--settings", help="comma-separated subset of the settings")
    recipes.add_argument("--seeds", type=int, help="use only the first N seeds")

    store = bench_sub.add_parser("store", help="a soft-label store (FKD) vs online KD and "
                                 "training alone: throughput, generation rate, bytes, accuracy")
    store.add_argument("--spec", default="benchmarks/store.yaml", help="experiment definition")
    store.add_argument("--results", default="benchmarks/results", help="where results go")
    store.add_argument("--epochs", type=int, help="override the students' epochs (smoke runs)")

    _entries_bench(bench_sub, "compress", "prune, int8 and ONNX on each model pair, "
                   "fine-tuned without, with CE and with KD, over seeds", "--pairs",
                   "the fine-tune epochs")
    _entries_bench(bench_sub, "schemes", "every scheme against the student alone and plain "
                   "KD, over seeds", "--schemes", "every run's epochs")


def _entries_bench(bench_sub, name: str, text: str, subset: str, epochs: str) -> None:
    """A benchmark over a spec's entries: spec, results, a subset, seeds, epochs, verbose."""
    b = bench_sub.add_parser(name, help=text)
    b.add_argument("--spec", default=f"benchmarks/{name}.yaml", help="benchmark spec")
    b.add_argument("--results", default="benchmarks/results", help="where results go")
    b.add_argument(subset, help="comma-separated subset of the spec's entries")
    b.add_argument("--seeds", type=int, help="use only the first N seeds")
    b.add_argument("--epochs", type=int, help=f"override {epochs} (smoke runs)")
    b.add_argument("--verbose", action="store_true", help="show each run's progress")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KDForgeError as exc:
        print(f"kdforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdforge: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    finally:
        from kdforge.engine.distributed import shutdown

        shutdown()  # leave the torchrun process group cleanly (no abort at exit)


def _dispatch(args: argparse.Namespace) -> int:
    key = f"bench {args.bench}" if args.command == "bench" else args.command
    return _COMMANDS[key](args)


def _list(args: argparse.Namespace) -> int:
    from kdforge import api

    if args.kind == "layers":
        for line in api.list_layers(args.model, args.overrides):
            print(line)
    else:
        for name, source, summary in api.list_registered(args.kind):
            print(f"{name:24s} {summary}" + (f"  [{source}]" if source else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from kdforge import api

    if args.resume:
        if args.config or args.overrides:
            raise _usage("--resume reads the run's own config.yaml; give no CONFIG or --set")
        result = api.resume(args.resume, verbose=not args.quiet)
    else:
        if not args.config:
            raise _usage(f"kdforge {args.command} needs a CONFIG file (or --resume RUN_DIR)")
        from kdforge.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.command == "distill":
            api.require_teacher(cfg)
        result = api.train(cfg, overwrite=args.overwrite, verbose=not args.quiet)
    if "records" in result.summary:  # a scheme: one record per stage, peer or exit
        shown = ("variant", "student", "test_accuracy", "agreement", "run_dir")
        records = [{k: r.get(k) for k in shown} for r in result.summary["records"]]
        print(json.dumps({"run_dir": str(result.run_dir), "records": records}, indent=2))
    else:
        print(json.dumps({"run_dir": str(result.run_dir), "test": result.summary["test"]},
                         indent=2))
    return 0


def _soft_labels(args: argparse.Namespace) -> int:
    from kdforge.config import SoftLabelConfig, load_config
    from kdforge.jobs.soft_labels import generate

    cfg = load_config(args.config, args.overrides, kind=SoftLabelConfig)
    print(json.dumps(generate(cfg, verbose=not args.quiet), indent=2))
    return 0


def _compress(args: argparse.Namespace) -> int:
    from kdforge.compress.config import CompressConfig
    from kdforge.compress.pipeline import compress
    from kdforge.compress.report import markdown
    from kdforge.config import load_config

    cfg = load_config(args.config, args.overrides, kind=CompressConfig)
    out = compress(cfg, resume=args.resume, overwrite=args.overwrite, verbose=not args.quiet)
    print(markdown(out))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from kdforge import api

    print(json.dumps(api.evaluate_run(args.run_dir, args.split), indent=2))
    return 0


def _bench_recipes(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_recipes import run_recipes

    epochs = [int(e) for e in _names(args.epochs)] if args.epochs else None
    run_recipes(args.spec, results=args.results, epochs=epochs, seeds=args.seeds,
                settings=_names(args.settings))
    print(f"results: {args.results}/recipes.md, recipes.json, recipes.png")
    return 0


def _bench_store(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_store import run_store_bench

    run_store_bench(args.spec, results=args.results, epochs=args.epochs)
    print(f"results: {args.results}/store.md, {args.results}/store.json")
    return 0


def _bench_schemes(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_schemes import run_schemes_bench

    run_schemes_bench(args.spec, results=args.results, schemes=_names(args.schemes),
                      seeds=args.seeds, epochs=args.epochs, verbose=args.verbose)
    print(f"results: {args.results}/schemes.md, {args.results}/schemes.json")
    return 0


def _bench_compress(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_compress import run_compress_bench

    run_compress_bench(args.spec, results=args.results, pairs=_names(args.pairs),
                       seeds=args.seeds, epochs=args.epochs, verbose=args.verbose)
    print(f"results: {args.results}/compress.md, compress.json, compress.png")
    return 0


def _bench_grid(args: argparse.Namespace) -> int:
    from kdforge.jobs.bench_grid import run_grid

    run_grid(args.grid, results=args.results, methods=_names(args.methods),
             pairs=_names(args.pairs), seeds=args.seeds, epochs=args.epochs)
    print(f"results: {args.results}/grid.md, {args.results}/grid.json")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kdforge.jobs.demo import run_demo

    run_demo(args.output, quick=args.quick, seeds=args.seeds)
    return 0


#: command (``bench NAME`` for benchmarks) -> what runs it
_COMMANDS = {"list": _list, "train": _train, "distill": _train, "soft-labels": _soft_labels,
             "compress": _compress, "evaluate": _evaluate, "bench grid": _bench_grid,
             "bench recipes": _bench_recipes, "bench compress": _bench_compress,
             "bench store": _bench_store, "bench schemes": _bench_schemes, "demo": _demo}


def _names(value: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None stays None (everything)."""
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _usage(message: str) -> KDForgeError:
    from kdforge.core.errors import ConfigError

    return ConfigError(message)


if __name__ == "__main__":
    sys.exit(main())
