"""Files written atomically: a crash never leaves a half-written file looking complete.

Every file is written to a temporary name in the same directory, flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX): the previous version stays
intact until the new one is whole.

The temporary file is ``.NAME.RANDOM.tmp`` beside the target. A process killed before the
rename leaves it behind; no reader ever opens it (every reader asks for the exact name),
and :func:`remove_temporaries` deletes such leftovers when a run is resumed. A write that
fails (disk full, no permission) removes its temporary file and raises
:class:`~kdforge.core.errors.RunDirError` naming the file. :func:`check_writable` finds an
output directory that cannot take a run (a file, not writable, no free space) before
training starts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge.core.errors import CheckpointError, RunDirError
from kdforge.core.faults import fault_point

#: Below this many free bytes an output directory is refused before training: a checkpoint
#: of even a tiny model would not fit.
MIN_FREE_BYTES = 1 << 20
#: ``errno`` values that mean the disk or the directory cannot take the file.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise disk_error(path, exc) or exc from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fault_point("write", f"write/{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        error = disk_error(path, exc) if isinstance(exc, Exception) else None
        if error is not None:
            raise error from exc
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a config file: a kill never leaves half)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def disk_error(path: str | os.PathLike, exc: BaseException) -> RunDirError | None:
    """A :class:`RunDirError` naming ``path`` if ``exc`` means the disk is full or the
    directory not writable (an ``OSError``, or a library's error that wraps one: safetensors
    reports ``No space left on device`` in its own exception type); else ``None``."""
    if isinstance(exc, RunDirError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text \
        or "StorageFull" in text or "os error 28" in text
    if full:
        return RunDirError(f"no space left on the device while writing {str(path)!r} "
                           f"({exc}); free space or choose another output_dir")
    if code in DISK_ERRNOS:
        return RunDirError(f"cannot write {str(path)!r} ({exc}); make the directory writable "
                           "or choose another output_dir")
    return None


def check_writable(directory: str | os.PathLike, min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse, before training, an output directory that cannot take a run's files.

    ``directory`` need not exist yet: its nearest existing ancestor must be a directory in
    which a file can be created, on a file system with at least ``min_free`` free bytes.
    Nothing is created (the probe file is removed). Raises :class:`RunDirError`.
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: creating the directory would fail
            break
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"{str(existing)!r} is a file (or not a directory), so the run "
                          f"directory {str(directory)!r} cannot be created in it; choose "
                          "another output_dir or name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdforge-probe.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(f"cannot write in {str(existing)!r} ({exc}); make it writable or "
                          "choose another output_dir") from None
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise RunDirError(f"only {free} bytes are free on the device of {str(existing)!r} "
                          f"(a run needs at least {min_free}); free space or choose another "
                          "output_dir")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an :func:`atomic_write` leftover (``.NAME.RANDOM.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def remove_temporaries(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files that killed writes left in ``directory`` (never a
    complete file: those have their own names). Call it only where no other process is
    writing (a resumed run's main process). Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = []
    for path in found:
        if path.is_file() and not path.is_symlink() and is_temporary(path):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON document in ``path`` (a file kdforge wrote: ``what`` it is); a damaged,
    binary or unreadable file is a :class:`CheckpointError` naming it and saying ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise CheckpointError(f"{str(path)!r} is not a readable {what} ({type(exc).__name__}: "
                              f"{exc}); {fix}") from None


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` (no pickle); a missing, damaged or
    foreign file is a :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, a header that is not JSON
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file "
                              f"({type(exc).__name__}: {exc}); it is missing or damaged: "
                              "recreate it (rerun what wrote it)") from None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")

    return atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


__all__ = ["MIN_FREE_BYTES", "atomic_write", "check_writable", "disk_error", "is_temporary",
           "remove_temporaries", "write_json", "write_text"]
