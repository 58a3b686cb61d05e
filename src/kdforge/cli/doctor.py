"""``kdforge doctor``: versions, devices, threads, and whether each optional extra works."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kdforge.cli.base import arguments, command


def _doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def _yes(value: Any) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}.get(value, str(value))


def _print(found: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)  # piped: no 80-column wrap
    versions = Table(title="versions", show_header=False)
    for name, value in found["versions"].items():
        versions.add_row(name, value or "[dim]not installed[/]")
    dev = found["devices"]
    devices = Table(title="devices and threads", show_header=False)
    for key, value in dev.items():
        if key != "cuda_devices":
            devices.add_row(key, _yes(value) if isinstance(value, bool) else str(value))
    for d in dev["cuda_devices"]:
        devices.add_row(f"cuda:{d['index']}", f"{d['name']} (capability {d['capability']}, "
                        f"{d['memory_gib']} GiB)")
    extras = Table(title="optional extras (pip install 'kdforge[EXTRA]')")
    for column in ("extra", "packages", "installed", "works", "s", "note"):
        extras.add_column(column, justify="right" if column == "s" else "left")
    for row in found["extras"]:
        packages = ", ".join(f"{p} {v or '-'}" for p, v in row["packages"].items())
        extras.add_row(row["extra"], packages, _yes(row["installed"]), _yes(row["works"]),
                       f"{row['seconds']:.2f}", row["note"])
    for table in (versions, devices, extras):
        console.print(table)


@command("doctor", "print versions, devices and threads, and check that each optional extra "
         "is installed and works", "kdforge doctor\n  kdforge doctor --json")
@arguments(_doctor_arguments)
def doctor(args: argparse.Namespace) -> int:
    from kdforge.jobs.doctor import diagnose

    found = diagnose()
    if args.json:
        print(json.dumps(found, indent=2, default=str))
    else:
        _print(found)
    return 0
