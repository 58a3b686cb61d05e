"""The ``kdforge`` command line: parses, validates, calls :mod:`kdforge.api` or
:mod:`kdforge.jobs`; nothing else.

Each command lives in a module of this package and registers itself in
:data:`kdforge.cli.base.COMMANDS` (name, help, an example shown by ``--help``, arguments,
what it runs); :func:`main` builds the parser from that registry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kdforge.cli import bench, doctor, report, run, tools  # noqa: F401  (each registers its commands)
from kdforge.cli.base import COMMANDS, Parser
from kdforge.core.errors import KDForgeError

DESCRIPTION = "Knowledge distillation for PyTorch: train teachers, distill students."
#: the order of ``kdforge --help`` (commands not named here follow, as registered)
ORDER = ("train", "distill", "evaluate", "report", "list", "soft-labels", "compress", "bench",
         "demo", "doctor")


def _ordered() -> list[str]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(COMMANDS, key=lambda name: rank.get(name.partition(" ")[0], len(ORDER)))


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    p = Parser(prog="kdforge", description=DESCRIPTION, formatter_class=formatter,
               epilog="example:\n  kdforge train configs/mnist1d/teacher.yaml\n"
                      "  kdforge distill configs/mnist1d/kd.yaml\n"
                      "  kdforge COMMAND --help   (each command shows its own example)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in _ordered():
        cmd = COMMANDS[name]
        parent, _, child = name.partition(" ")
        if not child:
            cmd_parser = sub.add_parser(name, help=cmd.help, description=cmd.help,
                                        epilog=f"example:\n  {cmd.example}",
                                        formatter_class=formatter)
        else:
            if parent not in groups:
                group = sub.add_parser(parent, help=f"run a {parent}mark and write its results "
                                       "to files" if parent == "bench" else parent,
                                       epilog=f"example:\n  {cmd.example}",
                                       formatter_class=formatter)
                groups[parent] = group.add_subparsers(dest=parent, required=True,
                                                      metavar=parent.upper() + "MARK"
                                                      if parent == "bench" else "NAME",
                                                      parser_class=Parser)
            cmd_parser = groups[parent].add_parser(child, help=cmd.help, description=cmd.help,
                                                   epilog=f"example:\n  {cmd.example}",
                                                   formatter_class=formatter)
        cmd.arguments(cmd_parser)
        cmd_parser.set_defaults(_command=name)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code = 1
    try:
        code = COMMANDS[args._command].run(args)
        return code
    except KDForgeError as exc:
        print(f"kdforge: error: {exc}", file=sys.stderr)
        code = 2
        return code
    except KeyboardInterrupt:
        print("kdforge: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        code = 130
        return code
    finally:
        from kdforge.engine.distributed import shutdown

        shutdown(wait_for_all=code == 0)  # leave the torchrun process group cleanly


__all__ = ["main"]
