"""The report as one self-contained HTML page and as Markdown.

The page has no script and loads nothing: the CSS is inline and every figure is a PNG in a
``data:image/png;base64,...`` URI, so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from kdforge.report.build import Figure, Report

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1b1f24; background: #f6f8fa; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 20px 0 6px; }
p, li { font-size: 14px; line-height: 1.45; }
.meta { color: #57606a; font-size: 13px; }
nav a { margin-right: 14px; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.path { text-align: left; font-family: monospace; font-size: 12px; color: #57606a; }
.wrap { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.note { color: #8c4a00; background: #fff8e6; border: 1px solid #f0d9a8; padding: 6px 10px;
        font-size: 13px; display: inline-block; }
.facts { color: #333; font-size: 13px; margin: 2px 0 10px; }
details summary { cursor: pointer; font-size: 14px; margin: 8px 0; }
"""

RUN_HEADER = ["group", "run", "seed", "kind", "state", "test acc %", "agree %", "ECE %",
              "predictions", "directory"]
HOW_TO_READ = {
    "table": "Each row is one setting: runs whose configs differ only in seed and name "
             "(the NAME-seedS runs of --seeds). Cells are the mean ± sample standard "
             "deviation over its finished seeds of the test metrics in summary.json: accuracy, "
             "top-1 agreement with the teacher, KL(teacher || student), expected calibration "
             "error (15 bins), parameters and forward latency of one batch.",
    "curves": "Validation accuracy and agreement, and every training loss part, per epoch "
              "(metrics.jsonl). A line is a group's mean over seeds, the band ± one std.",
    "fidelity": "A good student sits at the top right: high accuracy and high agreement. "
                "Points above the others at equal agreement generalise better than their "
                "teacher's mistakes would suggest; agreement well below the teacher's accuracy "
                "means the student learnt its own function (Stanton et al. 2021).",
    "calibration": "Reliability diagrams (Guo et al. 2017): test predictions binned by "
                   "confidence; a bar is the accuracy of its bin, the hatched part the gap to "
                   "the bin's mean confidence (bars under the diagonal: over-confident), the "
                   "black line the share of samples in each bin. The matrix counts the test "
                   "samples where teacher and student disagree: row = teacher's class, column "
                   "= student's class. Pooled over the group's seeds.",
    "records": "Schemes (scheme.json) and compression pipelines (compress.json) write one "
               "record per stage; their stage runs also appear above as runs.",
}


def _image(figure: Figure) -> str:
    if figure.png is None:
        return f'<p class="note">{escape(figure.note)}</p>'
    data = base64.b64encode(figure.png).decode("ascii")
    return f'<img alt="{escape(figure.title)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], body: Sequence[Sequence[str]],
           path_col: int | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    rows = []
    for cells in body:
        tds = "".join(f'<td class="path">{escape(c)}</td>' if i == path_col
                      else f"<td>{escape(c)}</td>" for i, c in enumerate(cells))
        rows.append(f"<tr>{tds}</tr>")
    return f'<div class="wrap"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def render_html(report: Report) -> str:
    """The whole page."""
    header, body = report.table
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(report.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="meta">{len(report.runs)} runs in {len(report.groups)} groups, read from '
        f"{escape(', '.join(report.inputs))} · written {escape(report.created)} by kdforge "
        "report</p>",
        '<nav><a href="#table">comparison</a><a href="#curves">learning curves</a>'
        '<a href="#fidelity">fidelity vs accuracy</a><a href="#calibration">calibration and '
        'disagreements</a>' + ('<a href="#records">schemes and pipelines</a>'
                               if report.records else "") + "</nav>",
        '<h2 id="table">Comparison across runs</h2>', f"<p>{escape(HOW_TO_READ['table'])}</p>",
        _table(header, body),
        f"<details><summary>all {len(report.run_rows)} runs</summary>"
        + _table(RUN_HEADER, report.run_rows, len(RUN_HEADER) - 1) + "</details>",
        '<h2 id="curves">Learning curves</h2>', f"<p>{escape(HOW_TO_READ['curves'])}</p>",
        _image(report.curves),
        '<h2 id="fidelity">Fidelity versus accuracy</h2>',
        f"<p>{escape(HOW_TO_READ['fidelity'])}</p>", _image(report.fidelity),
        '<h2 id="calibration">Calibration and disagreements</h2>',
        f"<p>{escape(HOW_TO_READ['calibration'])}</p>",
    ]
    if not report.calibration:
        parts.append('<p class="note">no training run to show</p>')
    for section in report.calibration:
        parts.append(f"<h3>{escape(section.group)}</h3>")
        if section.facts:
            parts.append(f'<p class="facts">{escape(" · ".join(section.facts))}</p>')
        parts.append(_image(section.figure))
    if report.records:
        parts += ['<h2 id="records">Schemes and pipelines</h2>',
                  f"<p>{escape(HOW_TO_READ['records'])}</p>"]
        for table in report.records:
            parts.append(f"<h3>{escape(table.title)} <span class=\"meta\">{escape(str(table.path))}"
                         "</span></h3>")
            parts.append(_table(table.header, table.body))
    if report.problems:
        parts.append("<h2>Files that could not be read</h2><ul>"
                     + "".join(f"<li>{escape(p)}</li>" for p in report.problems) + "</ul>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in body]
    return "\n".join(lines)


def _md_image(figure: Figure, images: str) -> str:
    if figure.png is None:
        return f"*{figure.note}*"
    return f"![{figure.title}]({images}/{figure.name}.png)"


def render_markdown(report: Report, images: str = "img") -> str:
    """The summary: the comparison table, the runs, the facts of each group's calibration
    and the figures as ``images/*.png`` links (the page has them embedded)."""
    header, body = report.table
    lines = [f"# {report.title}", "",
             f"{len(report.runs)} runs in {len(report.groups)} groups, read from "
             f"{', '.join(report.inputs)}; written {report.created}. The full page with every "
             "figure: report.html.", "", "## Comparison across runs", "", HOW_TO_READ["table"],
             "", _md_table(header, body), "", "## Learning curves", "",
             _md_image(report.curves, images), "", "## Fidelity versus accuracy", "",
             _md_image(report.fidelity, images), "", "## Calibration and disagreements", ""]
    for section in report.calibration:
        lines += [f"### {section.group}", "", "; ".join(section.facts) or "", "",
                  _md_image(section.figure, images), ""]
    for table in report.records:
        lines += [f"## {table.title}", "", f"`{table.path}`", "",
                  _md_table(table.header, table.body), ""]
    lines += ["## Runs", "", _md_table(RUN_HEADER, report.run_rows), ""]
    if report.problems:
        lines += ["## Files that could not be read", ""] + [f"- {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


__all__ = ["render_html", "render_markdown"]
