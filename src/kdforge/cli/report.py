"""``kdforge report``: one HTML page and a Markdown summary of run directories."""

from __future__ import annotations

import argparse

from kdforge.cli.base import arguments, command


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or directories that hold them (searched "
                             "recursively)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="where report.html, report.md and img/ go (default: report/ in "
                             "the first RUN_DIR when it holds runs, else beside it)")
    parser.add_argument("--title", default="kdforge report", help="the page's title")


@command("report", "write one self-contained HTML page and a Markdown summary of runs: "
         "learning curves, fidelity vs accuracy, calibration, disagreements, a table over seeds",
         "kdforge report runs/\n  kdforge report runs/kd-seed0 runs/kd-seed1 --output runs/report")
@arguments(_report_arguments)
def report(args: argparse.Namespace) -> int:
    from kdforge.report.build import write_report

    out = write_report(args.runs, args.output, title=args.title)
    print(f"{out['runs']} runs in {out['groups']} groups -> {out['html']} and {out['markdown']}")
    return 0
