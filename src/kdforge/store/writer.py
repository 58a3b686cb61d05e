"""Writing a store: fixed-size shard files, their checksums, then ``meta.json``.

Several processes may write one store: each writes a disjoint set of shard ids, every shard
file comes with a small sidecar ``.json`` holding its checksum, and one process's
:meth:`SoftLabelStoreWriter.close` collects the sidecars into ``meta.json``. Writes are
atomic (:mod:`kdforge.store.files`), so a crash leaves either the old file or the new one;
a rerun resumes, skipping the shards that verify.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kdforge.core.errors import StoreError
from kdforge.core.faults import fault_point
from kdforge.core.files import check_writable
from kdforge.store.files import (
    ShardPlan,
    atomic_write,
    canonical,
    normalise_meta,
    sha256_file,
    write_json,
)
from kdforge.store.format import FORMAT_NAME, FORMAT_VERSION, META_FILE, StoreLayout


class SoftLabelStoreWriter:
    """Writes a store: fixed-size shard files, their checksums, then ``meta.json``.

    Shard ``s`` holds samples ``[s * S, min((s + 1) * S, N))`` with all ``V`` views of each,
    records ordered by (sample, view): record ``(i - s * S) * V + v`` is view ``v`` of
    sample ``i``. :meth:`write_shard` writes a whole shard atomically, then its sidecar
    ``shard-XXXXX.json`` (sha256, sample range, size, and a fingerprint of the layout, the
    shard size and the user meta).

    Several processes: construct a writer with the *same* layout, meta and
    ``samples_per_shard`` in each process and give each process a disjoint set of shard ids
    (e.g. ``range(rank, num_shards, world_size)``); a shard file is written only by the
    writer that owns it. When all have finished, *one* process calls :meth:`close`, which
    collects every sidecar (refusing missing shards and sidecars of another configuration)
    and writes ``meta.json``. Sidecars stay next to the shards (a few hundred bytes each).

    Resume: :meth:`finished_shards` lists the shards whose file exists and matches its
    recorded sha256 (the sidecar's, or ``meta.json``'s when the sidecar is gone); write the
    others (:meth:`pending_shards`), which replaces corrupt or truncated files. Writing a
    shard removes a stale ``meta.json``, so readers never see checksums that no longer match:
    call :meth:`close` again afterwards. Temporary files of a killed writer (``.shard-*.tmp``)
    are never read; rewriting a shard deletes those of that shard.

    Args:
        path: the store directory (created).
        layout: the :class:`StoreLayout`.
        meta: JSON-serialisable user meta. Keys used by
            :meth:`SoftLabelStore.check_compatible`: ``"teacher"`` (identity and weight
            checksum), ``"dataset"`` (name and length), ``"view"`` (the view policy config);
            :meth:`SoftLabelStore.view_seed` reads ``"store_seed"``.
        samples_per_shard: ``S``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layout: StoreLayout,
        meta: dict[str, Any] | None = None,
        samples_per_shard: int = 4096,
    ) -> None:
        if not isinstance(layout, StoreLayout):
            raise StoreError(f"layout must be a StoreLayout; got {type(layout).__name__}")
        self.path = Path(path)
        self.layout = layout
        self.meta = normalise_meta(meta)
        self._plan = ShardPlan(layout, samples_per_shard)
        self.fingerprint = hashlib.sha256(
            canonical(
                {
                    "version": FORMAT_VERSION,
                    "layout": layout.to_dict(),
                    "samples_per_shard": self._plan.samples_per_shard,
                    "meta": self.meta,
                }
            ).encode()
        ).hexdigest()
        self._closed = False
        check_writable(self.path)  # a file, read-only or full: refused before any labelling
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the store directory {self.path}: {err}") from None
        meta_path = self.path / META_FILE
        if meta_path.exists():
            existing = self._read_meta_file()
            if existing is not None and existing.get("fingerprint") != self.fingerprint:
                raise StoreError(
                    f"{meta_path} belongs to a store of another configuration (layout, shard "
                    "size or meta differ); write to a new directory, or delete this one to "
                    "regenerate it"
                )

    @property
    def num_shards(self) -> int:
        return self._plan.num_shards

    @property
    def samples_per_shard(self) -> int:
        return self._plan.samples_per_shard

    def shard_samples(self, shard_id: int) -> tuple[int, int]:
        """The sample range ``[lo, hi)`` of a shard."""
        return self._plan.samples(self._plan.check_id(shard_id))

    def shard_path(self, shard_id: int) -> Path:
        return self.path / (self._plan.name(self._plan.check_id(shard_id)) + ".bin")

    def _sidecar_path(self, shard_id: int) -> Path:
        return self.path / (self._plan.name(shard_id) + ".json")

    def encode(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Records from tensors: :meth:`StoreLayout.encode`."""
        return self.layout.encode(*args, **kwargs)

    def write_shard(self, shard_id: int, records: np.ndarray) -> Path:
        """Write all records of one shard atomically (then its sidecar); returns its path."""
        if self._closed:
            raise StoreError(f"the writer of {self.path} is closed; open a new writer to resume")
        shard_id = self._plan.check_id(shard_id)
        dtype = self.layout.record_dtype()
        if not isinstance(records, np.ndarray) or records.dtype != dtype:
            got = records.dtype if isinstance(records, np.ndarray) else type(records).__name__
            raise StoreError(
                f"write_shard({shard_id}) expects a structured array of dtype {dtype} (build it "
                f"with encode); got {got}"
            )
        expected = self._plan.num_records(shard_id)
        if records.shape != (expected,):
            lo, hi = self._plan.samples(shard_id)
            raise StoreError(
                f"shard {shard_id} holds samples [{lo}, {hi}) x {self.layout.views_per_sample} "
                f"views = {expected} records, ordered (sample, view); got shape {records.shape}"
            )
        raw = np.ascontiguousarray(records).view(np.uint8)
        digest = hashlib.sha256(raw).hexdigest()
        # the store is changing: a meta.json written earlier may no longer match
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / META_FILE)
        target = self.shard_path(shard_id)
        self._remove_leftovers(shard_id)
        atomic_write(target, [raw])
        fault_point("shard")  # the shard is in place, its checksum not yet: a kill test
        lo, hi = self._plan.samples(shard_id)
        write_json(
            self._sidecar_path(shard_id),
            {
                "id": shard_id,
                "file": target.name,
                "sha256": digest,
                "samples": [lo, hi],
                "bytes": int(raw.nbytes),
                "fingerprint": self.fingerprint,
            },
        )
        return target

    def _remove_leftovers(self, shard_id: int) -> None:
        """Delete the temporary files a killed write of this shard (or of its sidecar) left:
        only this shard's writer writes them, so no other process is using them."""
        for name in (self.shard_path(shard_id).name, self._sidecar_path(shard_id).name):
            for leftover in self.path.glob(f".{name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _read_meta_file(self) -> dict[str, Any] | None:
        try:
            with open(self.path / META_FILE) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _recorded(self) -> dict[int, tuple[dict[str, Any], str]]:
        """shard id -> (entry with sha256 and bytes, where it came from), for this config."""
        found: dict[int, tuple[dict[str, Any], str]] = {}
        meta = self._read_meta_file()
        if meta is not None and meta.get("fingerprint") == self.fingerprint:
            for entry in meta.get("shards", []):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    found[int(entry["id"])] = (entry, META_FILE)
        for shard_id in range(self.num_shards):
            side = self._sidecar_path(shard_id)
            try:
                with open(side) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and entry.get("fingerprint") == self.fingerprint:
                found[shard_id] = (entry, side.name)
        return found

    def shard_status(self) -> dict[int, str]:
        """Every shard id -> ``"ok"`` or why it must be (re)written: ``"missing"``,
        ``"unrecorded"`` (a file without a checksum of this configuration), ``"truncated
        (... bytes, expected ...)"`` or ``"corrupt (sha256 mismatch)"``. Reads every shard."""
        recorded = self._recorded()
        status: dict[int, str] = {}
        for shard_id in range(self.num_shards):
            target = self.shard_path(shard_id)
            expected = self._plan.num_bytes(shard_id)
            if not target.exists():
                status[shard_id] = "missing"
            elif shard_id not in recorded:
                status[shard_id] = "unrecorded"
            elif (size := target.stat().st_size) != expected:
                status[shard_id] = f"truncated ({size} bytes, expected {expected})"
            elif sha256_file(target) != recorded[shard_id][0].get("sha256"):
                status[shard_id] = "corrupt (sha256 mismatch)"
            else:
                status[shard_id] = "ok"
        return status

    def finished_shards(self) -> list[int]:
        """Ids of the shards that exist and verify (skip them when resuming).

        Files that exist but fail (truncated, corrupt, no checksum) are reported with a
        :class:`UserWarning` naming the shard and the reason; they count as unfinished.
        """
        status = self.shard_status()
        for shard_id, state in status.items():
            if state not in ("ok", "missing"):
                warnings.warn(
                    f"shard {self.shard_path(shard_id)} is {state}; it will be rewritten",
                    stacklevel=2,
                )
        return [s for s, state in status.items() if state == "ok"]

    def pending_shards(self) -> list[int]:
        """Ids of the shards still to write (missing, truncated, corrupt or unrecorded)."""
        status = self.shard_status()
        return [s for s, state in status.items() if state != "ok"]

    def close(self, verify: bool = False) -> Path:
        """Collect the shards' checksums into ``meta.json`` (atomically); returns its path.

        Call it in ONE process, after every writer has finished. Every shard needs its file
        with the expected size and a sidecar (or an entry of an earlier ``meta.json``) of
        this configuration; ``verify=True`` also re-hashes every shard (reads the store).
        """
        shards, problems = self._shard_entries(verify)
        if problems:
            shown = "; ".join(problems[:8]) + (
                f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
            )
            raise StoreError(
                f"cannot finish the store {self.path}: {len(problems)} of {self.num_shards} "
                f"shards are not done ({shown}). Run the writers for these shards (rerunning "
                "the generation command resumes) and call close() again"
            )
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "layout": self.layout.to_dict(),
            "record_dtype": [list(map(_jsonable, d)) for d in self.layout.record_dtype().descr],
            "samples_per_shard": self.samples_per_shard,
            "num_shards": self.num_shards,
            "shards": shards,
            "meta": self.meta,
        }
        target = self.path / META_FILE
        for leftover in self.path.glob(f".{META_FILE}.*.tmp"):  # a killed close() left it
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        write_json(target, meta)
        self._closed = True
        return target


    def _shard_entries(self, verify: bool) -> tuple[list[dict[str, Any]], list[str]]:
        """The ``meta.json`` entry of every finished shard, and what is wrong with the others."""
        recorded = self._recorded()
        problems: list[str] = []
        shards = []
        for shard_id in range(self.num_shards):
            target = self.shard_path(shard_id)
            expected = self._plan.num_bytes(shard_id)
            if shard_id not in recorded:
                problems.append(f"{target.name}: not written (no checksum sidecar)")
                continue
            entry = recorded[shard_id][0]
            size = target.stat().st_size if target.exists() else None
            if size is None:
                problems.append(f"{target.name}: missing")
            elif size != expected:
                problems.append(f"{target.name}: {size} bytes, expected {expected}")
            elif verify and sha256_file(target) != entry.get("sha256"):
                problems.append(f"{target.name}: sha256 mismatch")
            else:
                lo, hi = self._plan.samples(shard_id)
                shards.append({"id": shard_id, "file": target.name, "sha256": entry["sha256"],
                               "samples": [lo, hi], "bytes": expected})
        return shards, problems


def _jsonable(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


__all__ = ["SoftLabelStoreWriter"]
