"""``kdforge train``, ``kdforge distill`` and ``kdforge evaluate``: one run, a run over
seeds, a resumed run, a finished run evaluated again."""

from __future__ import annotations

import argparse
import json

from kdforge.cli.base import add_set, arguments, command, usage


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config")
    add_set(parser, "train.epochs=5")
    parser.add_argument("--seeds", metavar="SEEDS", help="run the config once per seed "
                        "(comma list or range, e.g. 0,1,2 or 0-4): run directories NAME-seedS, "
                        "'{seed}' in the config's paths is replaced by the seed, and a summary "
                        "of mean and spread is written to OUTPUT_DIR/NAME-seeds.json")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--lr-scale", type=float, default=1.0, metavar="F",
                        help="with --resume: multiply every learning rate by F from the "
                        "checkpoint on (after a NaN loss, e.g. 0.5)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory of the same name")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


@command("train", "train a model (a teacher, a student alone, or a scheme: kdforge list "
         "schemes)", "kdforge train configs/mnist1d/teacher.yaml\n"
         "  kdforge train configs/mnist1d/student.yaml --seeds 0,1,2 --set train.epochs=20\n"
         "  kdforge train --resume runs/mnist1d-teacher\n"
         "  kdforge train --resume runs/mnist1d-teacher --lr-scale 0.5   (after a NaN loss)")
@arguments(_run_arguments)
def train(args: argparse.Namespace) -> int:
    return _train(args)


@command("distill", "distill a student from the config's teacher",
         "kdforge distill configs/mnist1d/kd.yaml\n"
         "  kdforge distill configs/mnist1d/kd.yaml --seeds 0-2 --set losses.0.T=2")
@arguments(_run_arguments)
def distill(args: argparse.Namespace) -> int:
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    from kdforge import api

    if args.resume:
        if args.config or args.overrides or args.seeds:
            raise usage("--resume reads the run's own config.yaml; give no CONFIG, --set or "
                        "--seeds")
        result = api.resume(args.resume, verbose=not args.quiet, lr_scale=args.lr_scale)
        _print_result(result)
        return 0
    if not args.config:
        raise usage(f"kdforge {args.command} needs a CONFIG file (or --resume RUN_DIR)")
    if args.lr_scale != 1.0:
        raise usage("--lr-scale applies to a resumed run: kdforge train --resume RUN_DIR "
                    "--lr-scale 0.5")
    from kdforge.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "distill":
        api.require_teacher(cfg)
    if args.seeds:
        from kdforge.jobs.seeds import parse_seeds, run_seeds, seeds_table

        study = run_seeds(cfg, parse_seeds(args.seeds), overwrite=args.overwrite,
                          verbose=not args.quiet)
        print(seeds_table(study))
        return 0
    from kdforge.jobs.seeds import has_placeholder, seeded

    if has_placeholder(cfg):  # '{seed}' in a path: this run's own seed
        cfg = seeded(cfg, cfg.seed)
    _print_result(api.train(cfg, overwrite=args.overwrite, verbose=not args.quiet))
    return 0


def _print_result(result) -> None:
    if "records" in result.summary:  # a scheme: one record per stage, peer or exit
        shown = ("variant", "student", "test_accuracy", "agreement", "run_dir")
        records = [{k: r.get(k) for k in shown} for r in result.summary["records"]]
        print(json.dumps({"run_dir": str(result.run_dir), "records": records}, indent=2))
    else:
        print(json.dumps({"run_dir": str(result.run_dir), "test": result.summary["test"]},
                         indent=2))


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--split", choices=["test", "val"], default="test")


@command("evaluate", "evaluate a finished run's model",
         "kdforge evaluate runs/mnist1d-kd --split val")
@arguments(_evaluate_arguments)
def evaluate(args: argparse.Namespace) -> int:
    from kdforge import api

    print(json.dumps(api.evaluate_run(args.run_dir, args.split), indent=2))
    return 0
