"""Reading a finished store: memory-mapped shards, records looked up by (sample, view)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from kdforge.core.errors import StoreError
from kdforge.store import compat
from kdforge.store.files import ShardPlan, read_json, sha256_file
from kdforge.store.format import FORMAT_NAME, FORMAT_VERSION, META_FILE, StoreLayout
from kdforge.store.records import StoreRecords, as_ids
from kdforge.store.seeds import view_seed
from kdforge.store.targets import dense_targets, log_probs, soft_targets

_REGENERATE = (
    "regenerate it by rerunning the same generation command (it resumes: only shards that "
    "fail verification are rewritten)"
)


def _read_meta(path: Path) -> dict[str, Any]:
    """The contents of a store's ``meta.json``, checked to be of this format and version."""
    meta_path = path / META_FILE
    if not path.is_dir():
        raise StoreError(
            f"the soft-label store {path} does not exist (no such directory); generate "
            "it first (kdforge soft-labels) or fix the path"
        )
    data = read_json(
        meta_path,
        "the soft-label store's meta file",
        "the store is unfinished or damaged: rerun the generation command (it resumes "
        "and writes meta.json at the end)",
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise StoreError(f"{meta_path} is not the meta file of a kdforge soft-label store")
    if data.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{meta_path} has format version {data.get('version')!r}; this kdforge reads "
            f"version {FORMAT_VERSION}: regenerate the store or use a matching kdforge"
        )
    return data


class SoftLabelStore:
    """Reads a finished store: memory-maps the shards and looks views up by (sample, view).

    Opening checks that ``meta.json`` is readable and of a supported version and that every
    shard exists with exactly the expected size, so a truncated shard is refused up front
    and never yields garbage; :meth:`verify` also checks the sha256 of every shard (reads
    the whole store). The memory maps open lazily and are not pickled, so a store can be
    handed to ``DataLoader`` workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        data = _read_meta(self.path)
        try:
            self.layout = StoreLayout.from_dict(data["layout"])
            self._plan = ShardPlan(self.layout, data["samples_per_shard"])
            shards = list(data["shards"])
        except KeyError as err:
            raise StoreError(f"{meta_path} lacks the key {err}; regenerate the store") from None
        except StoreError as err:
            raise StoreError(f"{meta_path}: {err}") from None
        self.meta: dict[str, Any] = data.get("meta", {})
        self.fingerprint = data.get("fingerprint")
        if len(shards) != self._plan.num_shards:
            raise StoreError(
                f"{meta_path} lists {len(shards)} shards but the layout needs "
                f"{self._plan.num_shards}; {_REGENERATE}"
            )
        self._files: list[Path] = []
        self._sha256: list[str] = []
        for shard_id, entry in enumerate(shards):
            file, digest = self._check_shard(shard_id, entry)
            self._files.append(file)
            self._sha256.append(digest)
        self._maps: list[np.memmap | None] = [None] * len(self._files)
        self._tables: list[np.ndarray | None] = [None] * len(self._files)

    def _check_shard(self, shard_id: int, entry: Any) -> tuple[Path, str]:
        """The file and recorded sha256 of a shard's ``meta.json`` entry, after checking that
        the entry fits the layout and that the file has exactly the expected size."""
        try:
            file, digest = self.path / entry["file"], entry["sha256"]
            ok = entry["id"] == shard_id and list(entry["samples"]) == list(
                self._plan.samples(shard_id)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise StoreError(
                f"{self.path / META_FILE}: the entry of shard {shard_id} is malformed; "
                f"{_REGENERATE}"
            )
        expected = self._plan.num_bytes(shard_id)
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise StoreError(
                f"shard {file} of the soft-label store is missing; {_REGENERATE}"
            ) from None
        if size != expected:
            raise StoreError(
                f"shard {file} has {size} bytes but the layout needs {expected} "
                f"({self._plan.num_records(shard_id)} records x {self.layout.bytes_per_view} "
                f"bytes); the shard is truncated or damaged: {_REGENERATE}"
            )
        return file, digest

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._files)
        state["_tables"] = [None] * len(self._files)
        return state

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"SoftLabelStore({str(self.path)!r}, N={lay.num_samples}, V={lay.views_per_sample}, "
            f"K={lay.num_classes}, k={lay.top_k}, {lay.value_format}, {lay.view_kind}, "
            f"{lay.bytes_per_view} B/view)"
        )

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    @property
    def views_per_sample(self) -> int:
        return self.layout.views_per_sample

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def num_shards(self) -> int:
        return self._plan.num_shards

    @property
    def samples_per_shard(self) -> int:
        return self._plan.samples_per_shard

    def shard_files(self) -> list[Path]:
        return list(self._files)

    def _map(self, shard_id: int) -> np.memmap:
        mm = self._maps[shard_id]
        if mm is None:
            mm = np.memmap(
                self._files[shard_id],
                dtype=self.layout.record_dtype(),
                mode="r",
                shape=(self._plan.num_records(shard_id),),
            )
            self._maps[shard_id] = mm
        return mm

    def _table(self, shard_id: int) -> np.ndarray:
        """Shard ``shard_id`` as a read-only ``(records, bytes_per_view)`` uint8 array over
        its memory map (nothing is copied until rows are gathered)."""
        table = self._tables[shard_id]
        if table is None:
            flat = np.asarray(self._map(shard_id)).view(np.uint8)
            table = flat.reshape(-1, self.layout.bytes_per_view)
            self._tables[shard_id] = table
        return table

    def verify(self) -> None:
        """Check the sha256 of every shard; :class:`StoreError` names every failing shard."""
        bad = [
            f"{file} (sha256 {actual[:12]}..., recorded {digest[:12]}...)"
            for file, digest in zip(self._files, self._sha256, strict=True)
            if (actual := sha256_file(file)) != digest
        ]
        if bad:
            raise StoreError(
                f"{len(bad)} shard(s) of the soft-label store {self.path} fail verification: "
                + "; ".join(bad)
                + f". The data is corrupt: {_REGENERATE}"
            )

    def raw(self, sample: Tensor | Sequence[int], view: Tensor | Sequence[int]) -> np.ndarray:
        """The undecoded records (structured array) of views ``view`` of samples ``sample``."""
        s, v = as_ids(sample), as_ids(view)
        if s.shape != v.shape:
            raise StoreError(
                f"sample and view must have the same length; got {s.shape} and {v.shape}"
            )
        lay = self.layout
        if s.size and (s.min() < 0 or s.max() >= lay.num_samples):
            raise StoreError(
                f"sample ids must lie in [0, {lay.num_samples}) for the store {self.path}; got "
                f"{s[(s < 0) | (s >= lay.num_samples)][:5].tolist()}"
            )
        if v.size and (v.min() < 0 or v.max() >= lay.views_per_sample):
            raise StoreError(
                f"view ids must lie in [0, {lay.views_per_sample}) for the store {self.path}; "
                f"got {v[(v < 0) | (v >= lay.views_per_sample)][:5].tolist()}"
            )
        shard = s // self.samples_per_shard
        rows = (s - shard * self.samples_per_shard) * lay.views_per_sample + v
        if self.num_shards == 1:  # the common small store: one gather, no masks
            return self._map(0)[rows]
        out = np.empty(s.shape[0], dtype=lay.record_dtype())
        for shard_id in np.unique(shard):
            where = shard == shard_id
            out[where] = self._map(int(shard_id))[rows[where]]
        return out

    def read(self, sample: Tensor | Sequence[int], view: Tensor | Sequence[int], *,
             checked: bool = False) -> StoreRecords:
        """Decoded records of view ``view[b]`` of sample ``sample[b]`` (``(B,)`` each).

        The same records as ``layout.decode(raw(sample, view))``, gathered from the memory
        map as bytes and decoded with numpy (this runs for every training batch). Ids may be
        tensors, arrays or sequences. ``checked=True`` skips the range check of the ids, for
        callers that drew them within range themselves.
        """
        s_np, v_np = as_ids(sample), as_ids(view)
        if s_np.shape != v_np.shape:
            raise StoreError(
                f"sample and view must have the same length; got {s_np.shape} and "
                f"{v_np.shape}"
            )
        lay = self.layout
        if s_np.size and not checked and (
                s_np.min() < 0 or s_np.max() >= lay.num_samples
                or v_np.min() < 0 or v_np.max() >= lay.views_per_sample):
            self.raw(s_np, v_np)  # raises the error naming the ids out of range
        per, views = self.samples_per_shard, lay.views_per_sample
        if self.num_shards == 1:
            rows = self._table(0)[s_np * views + v_np]
        else:
            shard = s_np // per
            offset = (s_np - shard * per) * views + v_np
            rows = np.empty((s_np.shape[0], lay.bytes_per_view), dtype=np.uint8)
            for shard_id in np.unique(shard).tolist():
                where = shard == shard_id
                rows[where] = self._table(shard_id)[offset[where]]
        return lay.decode_bytes(rows)

    def soft_targets(self, records: StoreRecords, T: float = 1.0, fill: str = "smooth") -> Tensor:
        """:func:`soft_targets` with this store's class count."""
        return soft_targets(records, self.num_classes, T=T, fill=fill)

    def log_probs(self, records: StoreRecords, T: float = 1.0, fill: str = "smooth") -> Tensor:
        """:func:`log_probs` with this store's class count."""
        return log_probs(records, self.num_classes, T=T, fill=fill)

    def dense_targets(self, records: StoreRecords,
                      fill: str = "smooth") -> tuple[Tensor, Tensor]:
        """:func:`dense_targets` with this store's class count."""
        return dense_targets(records, self.num_classes, fill)

    def view_seed(self, sample: Tensor, view: Tensor) -> Tensor:
        """:func:`view_seed` with the store seed recorded in the meta (``"store_seed"``)."""
        if "store_seed" not in self.meta:
            raise StoreError(
                f"the store {self.path} records no 'store_seed' in its meta, so noise seeds "
                "cannot be derived; regenerate it with a store seed"
            )
        return view_seed(int(self.meta["store_seed"]), sample, view)

    def check_compatible(self, num_samples: int | None = None, num_classes: int | None = None,
                         teacher: Any = None, view: Any = None, dataset: Any = None) -> None:
        """:func:`kdforge.store.compat.check_compatible` of this store."""
        compat.check_compatible(self, num_samples, num_classes, teacher, view, dataset)


__all__ = ["SoftLabelStore"]
