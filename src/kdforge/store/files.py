"""The store's files: atomic writes, JSON, checksums, and the shard arithmetic.

Writes are atomic (a temporary file in the same directory, fsync, ``os.replace``), so a
crash leaves either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdforge.core.errors import StoreError
from kdforge.core.faults import fault_point
from kdforge.core.files import disk_error

if TYPE_CHECKING:
    from kdforge.store.format import StoreLayout


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: Iterable[Any]) -> None:
    """Write ``chunks`` (bytes-like) to ``path`` atomically: temporary file in the same
    directory, fsync, ``os.replace``. Readers see the old file or the complete new one."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise disk_error(path, exc) or exc from None
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point("write", f"write/{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        error = disk_error(path, exc) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from exc
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, [(json.dumps(obj, indent=2) + "\n").encode()])


def read_json(path: Path, what: str, fix: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{what} {path} cannot be read ({err}); {fix}") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def normalise_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise StoreError(
            f"the store meta must be JSON-serialisable (strings, numbers, lists, dicts); {err}"
        ) from None


def shard_name(shard_id: int, num_shards: int) -> str:
    width = max(5, len(str(num_shards - 1)))
    return f"shard-{shard_id:0{width}d}"


class ShardPlan:
    """Shard arithmetic shared by the writer and the reader."""

    def __init__(self, layout: StoreLayout, samples_per_shard: int) -> None:
        if (
            isinstance(samples_per_shard, bool)
            or int(samples_per_shard) != samples_per_shard
            or samples_per_shard < 1
        ):
            raise StoreError(
                f"samples_per_shard must be a positive integer; got {samples_per_shard!r}"
            )
        self.layout = layout
        self.samples_per_shard = int(samples_per_shard)
        self.num_shards = -(-layout.num_samples // self.samples_per_shard)

    def check_id(self, shard_id: int) -> int:
        if (
            isinstance(shard_id, bool)
            or int(shard_id) != shard_id
            or not 0 <= shard_id < self.num_shards
        ):
            raise StoreError(
                f"shard id {shard_id!r} is out of range: this store has {self.num_shards} shards "
                f"(ids 0..{self.num_shards - 1})"
            )
        return int(shard_id)

    def samples(self, shard_id: int) -> tuple[int, int]:
        lo = shard_id * self.samples_per_shard
        return lo, min(lo + self.samples_per_shard, self.layout.num_samples)

    def num_records(self, shard_id: int) -> int:
        lo, hi = self.samples(shard_id)
        return (hi - lo) * self.layout.views_per_sample

    def num_bytes(self, shard_id: int) -> int:
        return self.num_records(shard_id) * self.layout.bytes_per_view

    def name(self, shard_id: int) -> str:
        return shard_name(shard_id, self.num_shards)


__all__ = ["ShardPlan", "atomic_write", "canonical", "fsync_dir", "normalise_meta", "read_json",
           "sha256_file", "shard_name", "write_json"]
