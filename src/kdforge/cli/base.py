"""What a command of the ``kdforge`` command line is, and the registry that holds them.

A command is a name, a one-line help, an example shown by ``--help``, a function that adds
its arguments and a function that runs it. Each command module registers its commands
here; :mod:`kdforge.cli` builds the parser from the registry, so adding a command never
touches a dispatch table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from kdforge.core.errors import ConfigError, KDForgeError


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors read like every other kdforge error: one line,
    ``kdforge: error: ...``, exit code 2, with where to find the right usage."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        print(f"kdforge: error: {self.prog}: {message} (see '{self.prog} --help')",
              file=sys.stderr)
        sys.exit(2)


@dataclass(frozen=True)
class Command:
    """One command: ``name`` (``"bench grid"`` for a sub-command), ``help``, ``example``
    (one or more command lines shown under ``--help``), ``arguments(parser)`` and
    ``run(args) -> exit code``."""

    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: command name -> Command, in registration order (the order of ``kdforge --help``)
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, example: str):
    """Register ``run`` as the command ``name``; the decorated function's ``arguments``
    attribute (set with :func:`arguments`) adds its arguments."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        add = getattr(run, "_arguments", lambda parser: None)
        COMMANDS[name] = Command(name, help, example, add, run)
        return run

    return wrap


def arguments(add: Callable[[argparse.ArgumentParser], None]):
    """Attach the function that adds a command's arguments (apply below :func:`command`)."""

    def wrap(run):
        run._arguments = add
        return run

    return wrap


def names(value: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None stays None (everything)."""
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def usage(message: str) -> KDForgeError:
    """A usage error raised by a command's ``run`` (printed as ``kdforge: error: ...``)."""
    return ConfigError(message)


def add_set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=f"override a config value, e.g. {example}")


__all__ = ["COMMANDS", "Command", "Parser", "add_set", "arguments", "command", "names", "usage"]
