"""Run output: the metrics JSONL file and the progress display.

The progress bar (rich) shows the epoch, the loss parts, throughput and ETA. It is live only
on an interactive terminal of the main process; in CI (``CI`` set) or when output is piped it
falls back to one plain line per epoch, or to silence with ``verbose=False``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdforge.core.files import write_text

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON record per evaluation to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """The records written so far (oldest first)."""
        return read_metrics(self.path.parent)

    def truncate_after(self, epoch: int) -> None:
        """Drop records past ``epoch`` (written after the checkpoint a resume starts from),
        and a torn last line (a process killed or a disk filled mid-append); atomically."""
        if not self.path.exists():
            return
        kept = [json.dumps(r) for r in read_metrics(self.path.parent)
                if r.get("epoch", 0) <= epoch]
        write_text(self.path, "".join(line + "\n" for line in kept))


class TensorBoardLog:
    """Mirrors each epoch record into TensorBoard event files in ``run_dir/tensorboard``
    (``metrics.jsonl`` is written in any case)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from kdforge.core.errors import ConfigError

            raise ConfigError(
                "train.tensorboard is true but the tensorboard package is not installed: "
                "pip install 'kdforge[tensorboard]', or set train.tensorboard=auto (write "
                "events only when it is installed) or false"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @classmethod
    def open(cls, run_dir: Path, setting: bool | str) -> TensorBoardLog | None:
        """The log for ``train.tensorboard``: ``False`` -> none; ``True`` -> one (an error
        if tensorboard is missing); ``"auto"`` -> one when tensorboard imports."""
        if setting is False:
            return None
        if setting == "auto" and not tensorboard_available():
            return None
        return cls(run_dir)

    def append(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` imports (the ``tensorboard`` extra)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:  # missing, or installed but broken (a protobuf mismatch)
        return False
    return True


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; a torn last line (killed mid-append) is
    skipped, a torn line before others is an error naming the file."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        from kdforge.core.errors import CheckpointError

        raise CheckpointError(f"{str(path)!r} cannot be read as metrics ({type(exc).__name__}); "
                              "the file is damaged: start the run again (--overwrite)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            from kdforge.core.errors import CheckpointError

            raise CheckpointError(f"{str(path)!r} line {i + 1} is not JSON; the file is "
                                  "damaged: start the run again (--overwrite)") from None
    return records


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


class ProgressReporter:
    """Live bar on a terminal; a line per epoch otherwise; nothing when disabled."""

    def __init__(self, enabled: bool, total_epochs: int, steps_per_epoch: int,
                 title: str = "") -> None:
        self.enabled = enabled
        self.live = enabled and interactive()
        self.total_epochs = total_epochs
        self.steps = steps_per_epoch
        self.title = title
        self.console = Console()
        self._progress: Progress | None = None
        self._task = None

    def start_epoch(self, epoch: int) -> None:
        if not self.live:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
        desc = f"{self.title} epoch {epoch + 1}/{self.total_epochs}".strip()
        if self._task is None:
            self._task = self._progress.add_task(desc, total=self.steps, info="")
        else:
            self._progress.reset(self._task, total=self.steps, description=desc, info="")

    def update(self, steps: int, parts: dict[str, float], samples_per_s: float) -> None:
        if self.live and self._progress is not None:
            info = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
            self._progress.update(self._task, advance=steps,
                                  info=f"{info} {samples_per_s:,.0f} samples/s")

    def end_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        keys = ["train/loss", "val/accuracy", "val/agreement", "val/kl", "samples_per_s"]
        shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
        line = f"{self.title} epoch {record['epoch']}/{self.total_epochs} {shown}".strip()
        if self.live:
            self.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
