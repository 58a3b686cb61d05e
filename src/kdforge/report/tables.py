"""Results tables from run directories (reads ``summary.json`` files only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: (key in summary["test"], column title, scale, decimals)
TEST_COLUMNS = [
    ("accuracy", "test acc %", 100.0, 1),
    ("agreement", "agree %", 100.0, 1),
    ("kl", "KL(T||S)", 1.0, 3),
    ("ece", "ECE %", 100.0, 1),
]


@dataclass
class Row:
    """One table row: a setting (e.g. "KD student") aggregated over its seeds."""

    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # shown after the label (a scheme's records, an unfinished run)

    def values(self, key: str) -> list[float]:
        return [r["test"][key] for r in self.runs
                if isinstance(r.get("test"), dict) and r["test"].get(key) is not None]

    def summary_values(self, key: str) -> list[float]:
        """A top-level number of every run's summary (``student_params``, ``latency_ms``)."""
        return [r[key] for r in self.runs if isinstance(r.get(key), (int, float))]

    def stat(self, key: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation and count of a test metric over seeds."""
        return mean_std(self.values(key))

    def first(self, key: str) -> Any:
        return self.runs[0].get(key) if self.runs else None


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var), n


def load_summaries(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    out = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        out.append(json.loads(path.read_text()))
    return out


def build_rows(groups: Mapping[str, Sequence[str | os.PathLike]]) -> list[Row]:
    """``{"teacher": [run_dir, ...], "KD student": [...]}`` -> rows in that order."""
    return [Row(label, load_summaries(dirs)) for label, dirs in groups.items()]


def format_stat(values: Sequence[float], scale: float = 1.0, decimals: int = 1,
                thousands: bool = False, zero_spread: bool = True) -> str:
    """``mean ± std`` of ``values`` (sample std; the mean alone for one value, or when the
    spread is 0 and not ``zero_spread``; ``-`` for none), scaled."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    spec = f",.{decimals}f" if thousands else f".{decimals}f"
    if n == 1 or (std == 0.0 and not zero_spread):
        return f"{mean * scale:{spec}}"
    return f"{mean * scale:{spec}} ± {std * scale:{spec}}"


def _cell(row: Row, key: str, scale: float, decimals: int) -> str:
    return format_stat(row.values(key), scale, decimals)


def table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells: params, seeds, test metrics (mean ± std over seeds),
    ms/batch (mean ± std; ``-`` where a run did not measure it)."""
    batch = next((r.first("latency_batch") for r in rows if r.runs and r.first("latency_batch")),
                 None)
    header = ["model", "params", "seeds", *[c[1] for c in TEST_COLUMNS],
              f"ms/batch ({batch})" if batch else "ms/batch"]
    body = []
    for row in rows:
        body.append([
            row.label + (f" ({row.note})" if row.note else ""),
            format_stat(row.summary_values("student_params"), decimals=0, thousands=True,
                        zero_spread=False),
            str(len(row.runs)),
            *[_cell(row, key, scale, dec) for key, _, scale, dec in TEST_COLUMNS],
            format_stat(row.summary_values("latency_ms"), decimals=3),
        ])
    return header, body


def markdown_table(rows: Sequence[Row]) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Row], title: str = ""):
    from rich.table import Table

    header, body = table_cells(rows)
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    return table
