"""The report of a compression pipeline (or its benchmark): a table and a plot.

``{"runs": [record per stage]}`` -> ``STEM.json``, ``STEM.md`` and ``STEM.png`` (test
accuracy of every chain against CPU latency at batch 64 and against the file size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.core.files import write_json

#: chains shown in the table, in this order, when the records have them
CHAINS = ("none", "ce", "kd", "ce_kd")
NOTE = ("Unstructured sparsity zeroes weights but keeps every tensor dense: parameters, file "
        "size and latency are those of the dense model (dense kernels do not skip zeros).")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(out: dict[str, Any]) -> str:
    """The table of ``out["runs"]``: one line per pair and stage."""
    runs = out["runs"]
    chains = [c for c in CHAINS if any(f"{c}_accuracy" in r for r in runs)]
    head = ["pair", "stage", "params", "KiB", "ms b1", "ms b64",
            *(f"{c} acc" for c in chains), "agreement", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        notes = []
        for key in ("route", "method", "sparsity", "agreement_with_pytorch"):
            if r.get(key) is not None:
                notes.append(f"{key} {_fmt(r[key], 3 if key == 'sparsity' else 1)}")
        cells = [r["pair"], r["stage"], str(round(r["params"])), _fmt(r["file_bytes"] / 1024),
                 _fmt(r.get("latency_ms_b1"), 3), _fmt(r.get("latency_ms_b64"), 2),
                 *(_fmt(r.get(f"{c}_accuracy")) for c in chains), _fmt(r.get("agreement")),
                 ", ".join(notes)]
        lines.append("| " + " | ".join(cells) + " |")
    threads = {round(r["latency_threads"]) for r in runs if r.get("latency_threads")}
    lines += ["", f"Latency: median ms per forward pass on CPU, {', '.join(map(str, threads))} "
              "thread(s), variants timed interleaved in one process. Accuracy: test split, "
              "percent; chain `none` is the compressed model with no fine-tune, `ce` and "
              "`kd` fine-tuned at the same budget with the labels or the original as teacher. "
              "Agreement: top-1 with the original model (kd chain).", "", NOTE]
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: Path) -> Path:
    """Accuracy against latency (the largest batch timed) and against file size, one
    series per chain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    chains = [c for c in CHAINS if any(f"{c}_accuracy" in r for r in runs)]
    pairs = list(dict.fromkeys(r["pair"] for r in runs))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.6 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs, strict=True):
        rs = [r for r in runs if r["pair"] == pair]
        batch = max(int(k[len("latency_ms_b"):]) for k in rs[0] if k.startswith("latency_ms_b"))
        for ax, key, label in ((row[0], f"latency_ms_b{batch}",
                                f"CPU latency, batch {batch} (ms)"),
                               (row[1], "file_bytes", "file size (KiB)")):
            for chain, marker in zip(chains, "oxs^", strict=False):
                xs = [r[key] / (1024 if key == "file_bytes" else 1) for r in rs]
                ys = [r.get(f"{chain}_accuracy") for r in rs]
                ax.plot(xs, ys, marker=marker, linestyle="none", label=chain)
            for r in rs:
                x = r[key] / (1024 if key == "file_bytes" else 1)
                ax.annotate(r["stage"], (x, r.get("kd_accuracy") or 0), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(pair, fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(folder: Path, stem: str, out: dict[str, Any]) -> None:
    """``STEM.json``, ``STEM.md`` and ``STEM.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{stem}.json", out)
    (folder / f"{stem}.md").write_text(markdown(out))
    plot(out, folder / f"{stem}.png")


__all__ = ["markdown", "plot", "write_report"]
