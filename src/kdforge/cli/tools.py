"""``kdforge list``, ``kdforge soft-labels``, ``kdforge compress`` and ``kdforge demo``."""

from __future__ import annotations

import argparse
import json

from kdforge.cli.base import add_set, arguments, command

LIST_KINDS = ["models", "losses", "datasets", "views", "schemes", "modalities", "optimizers",
              "schedules", "layer-types", "layers"]


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=LIST_KINDS)
    parser.add_argument("model", nargs="?", help="with 'layers': the model whose layers to print")
    add_set(parser, "num_classes=10 (with 'layers': num_classes=N, input_shape=[C,H,W] or a "
            "model option)")


@command("list", "print what is registered (models, losses, datasets, views, schemes, "
         "modalities, optimizers, schedules, layer-types) or a model's layers",
         "kdforge list losses\n  kdforge list datasets\n"
         "  kdforge list layers resnet8 --set input_shape=[3,32,32]")
@arguments(_list_arguments)
def list_(args: argparse.Namespace) -> int:
    from kdforge import listing

    if args.kind == "layers":
        for line in listing.list_layers(args.model, args.overrides):
            print(line)
    else:
        for name, source, summary in listing.list_registered(args.kind):
            print(f"{name:24s} {summary}" + (f"  [{source}]" if source else ""))
    return 0


def _soft_label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML soft-label config")
    add_set(parser, "store.views_per_sample=50")
    parser.add_argument("--quiet", action="store_true")


@command("soft-labels", "run the teacher once over many views and store the soft labels (FKD); "
         "a rerun resumes at the first unfinished shard",
         "kdforge soft-labels configs/soft_labels/mnist1d.yaml "
         "--set store.views_per_sample=50")
@arguments(_soft_label_arguments)
def soft_labels(args: argparse.Namespace) -> int:
    from kdforge.config import SoftLabelConfig, load_config
    from kdforge.jobs.soft_labels import generate

    cfg = load_config(args.config, args.overrides, kind=SoftLabelConfig)
    print(json.dumps(generate(cfg, verbose=not args.quiet), indent=2))
    return 0


def _compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML compression config (configs/compress/)")
    add_set(parser, "finetune.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue the pipeline at its "
                        "first unfinished stage")
    parser.add_argument("--overwrite", action="store_true", help="start the pipeline again")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


@command("compress", "prune, quantize and export a trained run, each stage fine-tuned by "
         "distillation from the original",
         "kdforge compress configs/compress/mnist1d.yaml\n"
         "  kdforge compress configs/compress/mnist1d.yaml --resume")
@arguments(_compress_arguments)
def compress(args: argparse.Namespace) -> int:
    from kdforge.compress.config import CompressConfig
    from kdforge.compress.pipeline import compress as run_pipeline
    from kdforge.compress.report import markdown
    from kdforge.config import load_config

    cfg = load_config(args.config, args.overrides, kind=CompressConfig)
    out = run_pipeline(cfg, resume=args.resume, overwrite=args.overwrite,
                       verbose=not args.quiet)
    print(markdown(out))
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="where runs, table and plots go")
    parser.add_argument("--quick", action="store_true", help="a tiny version (smoke test)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per student setting")


@command("demo", "train teachers and distill students on bundled data",
         "kdforge demo --output runs/demo\n  kdforge demo --quick --seeds 1")
@arguments(_demo_arguments)
def demo(args: argparse.Namespace) -> int:
    from kdforge.jobs.demo import run_demo

    run_demo(args.output, quick=args.quick, seeds=args.seeds)
    return 0
