"""Is this store made for this run? Layout, meta and the training split's fingerprint.

A store's labels are only right for the very samples it labelled: sample ``i`` of the store
is sample ``i`` of the training split it was generated from. Length, class count and data
set name are not enough (two MNIST-1D draws of the same size differ in every sample), so a
store records, in ``meta["dataset"]``, the data section it was made with (``name``,
``options``, ``val_fraction``) and a fingerprint of the training split's content
(:func:`split_fingerprint`), and :func:`check_run` compares both with the run before any
training step:

* the fingerprints agree: the samples are the store's (whatever the options say: an option
  that does not change the samples, like a cache switch, may differ);
* they differ: :class:`~kdforge.core.errors.StoreError` naming how (another order, other
  labels, other inputs) and the data options that differ, with the fix;
* the store records no fingerprint (made by kdforge before it had one): the recorded
  options and ``val_fraction`` must equal the run's (else ``StoreError``), and a
  ``UserWarning`` says the samples themselves could not be checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdforge.core.errors import StoreError
from kdforge.data.loaders import load_batch
from kdforge.store.files import canonical, normalise_meta
from kdforge.store.format import META_FILE

if TYPE_CHECKING:
    from kdforge.store.reader import SoftLabelStore

#: Version of :func:`split_fingerprint`'s method (recorded; stores of another are refused).
FINGERPRINT_VERSION = 1


# --- the fingerprint ---------------------------------------------------------------------------

def split_fingerprint(dataset: Any, batch_size: int = 1024) -> dict[str, Any]:
    """A fingerprint of a training split's content: its inputs and labels, in order.

    Reads the samples batch by batch, as the store's generator does (``__getitems__`` or
    item by item), with inputs as little-endian float32 and labels as int64 (float32 for
    soft targets). The fingerprint holds three SHA-256 digests: ``inputs`` (the input bytes
    in order), ``targets`` (the label bytes in order) and ``unordered`` (the sorted 64-bit
    keys of the (input, label) pairs, :func:`_sample_keys`: equal for the same samples in
    another order, it only tells that difference apart). Two splits are the same if
    ``inputs`` and ``targets`` agree. The cost is one pass over the data: milliseconds for
    MNIST-1D, seconds for CIFAR-10.
    """
    n = len(dataset)
    inputs, targets = hashlib.sha256(), hashlib.sha256()
    keys = [np.zeros(0, dtype=np.uint64)]
    for lo in range(0, n, batch_size):
        batch = load_batch(dataset, range(lo, min(n, lo + batch_size)))
        x = np.ascontiguousarray(batch.inputs.detach().to("cpu", torch.float32).numpy(),
                                 dtype="<f4")
        labels = _label_rows(batch.targets, x.shape[0])
        inputs.update(x)
        targets.update(labels)
        keys.append(_sample_keys(x.reshape(x.shape[0], -1), labels))
    unordered = np.sort(np.concatenate(keys)).astype("<u8")
    return {"version": FINGERPRINT_VERSION, "num_samples": n,
            "inputs": inputs.hexdigest(), "targets": targets.hexdigest(),
            "unordered": hashlib.sha256(unordered).hexdigest()}


def _label_rows(targets: torch.Tensor | None, n: int) -> np.ndarray:
    """``(n, m)`` labels: int64 class indices, float32 soft targets, none if absent."""
    if targets is None:
        return np.zeros((n, 0), dtype="<i8")
    t = targets.detach().cpu()
    dtype = "<f4" if t.is_floating_point() else "<i8"
    t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
    return np.ascontiguousarray(t.reshape(n, -1).numpy(), dtype=dtype)


_M64 = (1 << 64) - 1
_WORDS_PER_CHUNK = 1 << 22  # bounds the uint64 copy of a batch's words


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection with full avalanche), on uint64 arrays."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


@functools.lru_cache(maxsize=8)
def _multipliers(size: int, stream: int) -> np.ndarray:
    """``size`` odd 64-bit multipliers, a fixed SplitMix64 sequence of ``stream``."""
    z = (np.arange(size, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = z + np.uint64((stream * 0xD1B54A32D192ED03) & _M64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) | np.uint64(1)


def _row_hash(words: np.ndarray, stream: int) -> np.ndarray:
    """``(B,)`` uint64: ``sum_d words[b, d] * P_d mod 2**64`` with odd ``P_d``; a change of a
    single word always changes it (``P_d`` is invertible modulo ``2**64``)."""
    rows, size = words.shape
    out = np.zeros(rows, dtype=np.uint64)
    step = max(1, _WORDS_PER_CHUNK // max(rows, 1))
    multipliers = _multipliers(size, stream)
    for start in range(0, size, step):
        out += words[:, start:start + step].astype(np.uint64) @ multipliers[start:start + step]
    return out


def _sample_keys(inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(B,)`` uint64 keys of the (input, label) pairs of a batch (for ``unordered``)."""
    x = _row_hash(inputs.view("<u4"), 1)
    y = _row_hash(labels.view("<u4"), 2)
    return _fmix64(x ^ _fmix64(y + np.uint64(0x9E3779B97F4A7C15)))


def fingerprint_difference(run: Mapping[str, Any], store: Mapping[str, Any]) -> str | None:
    """How the split of fingerprint ``run`` differs from the store's, or ``None`` if equal."""
    if run.get("inputs") == store.get("inputs") and run.get("targets") == store.get("targets"):
        return None
    if run.get("unordered") == store.get("unordered"):
        return "it holds the same samples in another order"
    if run.get("inputs") == store.get("inputs"):
        return "its inputs are the same but some labels differ"
    if run.get("targets") == store.get("targets"):
        return "its labels are the same but some inputs differ"
    return "its inputs and labels differ"


# --- data sections -----------------------------------------------------------------------------

def data_section(data: Any) -> dict[str, Any]:
    """``{"name", "options", "val_fraction"}`` of a ``DataConfig`` (or such a mapping)."""
    if isinstance(data, Mapping):
        name, options, val = data.get("name"), data.get("options"), data.get("val_fraction")
    else:
        name, options, val = data.name, data.options, data.val_fraction
    return normalise_meta({"name": name, "options": dict(options or {}),
                           "val_fraction": None if val is None else float(val)})


def section_differences(run: Mapping[str, Any], store: Mapping[str, Any]) -> list[str]:
    """``"options.seed=8 (store: 7)"`` for every option (and ``val_fraction``) that differs."""
    out = []
    ours, theirs = dict(run.get("options") or {}), dict(store.get("options") or {})
    for key in sorted(set(ours) | set(theirs)):
        if canonical(ours.get(key)) != canonical(theirs.get(key)):
            out.append(f"options.{key}={_shown(ours, key)} (store: {_shown(theirs, key)})")
    if "val_fraction" in store and run.get("val_fraction") is not None and float(
            run["val_fraction"]) != float(store["val_fraction"]):
        out.append(f"val_fraction={run['val_fraction']} (store: {store['val_fraction']})")
    return out


def _shown(options: Mapping[str, Any], key: str) -> str:
    return json.dumps(options[key]) if key in options else "not set"


def _section_yaml(section: Mapping[str, Any]) -> str:
    """A data section as one YAML flow mapping (options inline, as a config writes them)."""
    items = {"name": section.get("name"), **dict(section.get("options") or {})}
    if section.get("val_fraction") is not None:
        items["val_fraction"] = section["val_fraction"]
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in items.items()) + "}"


# --- the checks --------------------------------------------------------------------------------

def check_samples(store: SoftLabelStore, dataset: Any, data: Any = None) -> None:
    """Refuse (:class:`StoreError`) a store that was not made from exactly ``dataset``.

    ``dataset`` is the run's training split; ``data`` its data section (a ``DataConfig``
    or ``{"name", "options", "val_fraction"}``), used to name what differs. See the module
    docstring for stores without a fingerprint.
    """
    recorded = store.meta.get("dataset")
    recorded = recorded if isinstance(recorded, dict) else {}
    run = data_section(data) if data is not None else {}
    differences = section_differences(run, recorded) if run else []
    stored = recorded.get("fingerprint")
    where = store.path / META_FILE
    if not isinstance(stored, dict):
        if differences:
            raise StoreError(
                f"the soft-label store {store.path} was made from another data section: "
                f"{', '.join(differences)}. {_fix(run, recorded)}"
            )
        warnings.warn(
            f"the soft-label store {store.path} was made by an older kdforge and records no "
            f"fingerprint of its training samples ({where}), so only its data options could "
            "be checked; regenerate it (kdforge soft-labels) to have its samples checked",
            UserWarning, stacklevel=2)
        return
    if stored.get("version") != FINGERPRINT_VERSION:
        raise StoreError(
            f"the soft-label store {store.path} records a fingerprint of version "
            f"{stored.get('version')!r}; this kdforge computes version {FINGERPRINT_VERSION}, "
            "so the store's samples cannot be checked: regenerate it with this kdforge"
        )
    how = fingerprint_difference(split_fingerprint(dataset), stored)
    if how is None:
        return
    options = f" The data sections differ in {', '.join(differences)}." if differences else ""
    raise StoreError(
        f"the soft-label store {store.path} was made from other training samples than this "
        f"run's: the fingerprint of the run's training split does not match the store's "
        f"({how}).{options} {_fix(run, recorded)}"
    )


def _fix(run: Mapping[str, Any], recorded: Mapping[str, Any]) -> str:
    store_data = _section_yaml(recorded) if recorded.get("name") else "the store's data section"
    return ("Regenerate the store from this run's data section (kdforge soft-labels with "
            f"data: {_section_yaml(run) if run else 'the run data section'}), or train on the "
            f"store's: data: {store_data}")


def check_run(store: SoftLabelStore, dataset: Any, *, num_classes: int,
              input_shape: Sequence[int], data: Any) -> None:
    """Every check of a run against its store, before training: the training split's
    length, the class count, the data set's name, the input shape and the samples
    themselves (:func:`check_samples`)."""
    name = data_section(data)["name"]
    check_compatible(store, num_samples=len(dataset), num_classes=num_classes, dataset=name)
    shape = store.meta.get("input_shape")
    if shape is not None and list(shape) != list(input_shape):
        raise StoreError(
            f"the store {store.path} was made for inputs of shape {list(shape)}, the run has "
            f"{list(input_shape)}; regenerate the store for this data set"
        )
    check_samples(store, dataset, data)


def check_compatible(store: SoftLabelStore, num_samples: int | None = None,
                     num_classes: int | None = None, teacher: Any = None, view: Any = None,
                     dataset: Any = None) -> None:
    """Raise :class:`StoreError` if the store does not match the training run.

    Each argument that is given is compared with the store: ``num_samples`` and
    ``num_classes`` with the layout (and ``num_samples`` with ``meta["dataset"]["length"]``
    when recorded), ``teacher``, ``view`` and ``dataset`` with ``meta["teacher"]``,
    ``meta["view"]`` and ``meta["dataset"]`` (JSON values compared after a JSON round
    trip; a string ``dataset`` is compared with ``meta["dataset"]["name"]`` when the
    store records a dict). A value the store does not record cannot be checked and
    also raises. The samples themselves are compared by :func:`check_samples`.
    """
    where = store.path / META_FILE
    fix = f"regenerate the store for this run, or point the run at a matching store (not {store.path})"
    layout = store.layout
    if num_samples is not None and int(num_samples) != layout.num_samples:
        raise StoreError(
            f"the data set has {int(num_samples)} samples but the store {where} was made "
            f"for {layout.num_samples}; {fix}"
        )
    if num_classes is not None and int(num_classes) != layout.num_classes:
        raise StoreError(
            f"the run has {int(num_classes)} classes but the store {where} holds "
            f"{layout.num_classes}; {fix}"
        )
    stored_ds = store.meta.get("dataset")
    if num_samples is not None and isinstance(stored_ds, dict) and "length" in stored_ds:
        if int(stored_ds["length"]) != int(num_samples):
            raise StoreError(
                f"the data set has {int(num_samples)} samples but the store {where} records "
                f"a data set of length {stored_ds['length']}; {fix}"
            )
    for key, value in (("teacher", teacher), ("view", view), ("dataset", dataset)):
        if value is not None:
            _check_meta(store, key, value, fix)


def _check_meta(store: SoftLabelStore, key: str, value: Any, fix: str) -> None:
    where = store.path / META_FILE
    if key not in store.meta:
        raise StoreError(
            f"the store {where} records no {key!r} in its meta, so it cannot be checked "
            f"against {value!r}; {fix}"
        )
    stored = store.meta[key]
    given = normalise_meta({"v": value})["v"]
    if key == "dataset" and isinstance(given, str) and isinstance(stored, dict):
        stored = stored.get("name")
    if key == "dataset" and isinstance(stored, dict):
        stored = {k: v for k, v in stored.items() if k != "fingerprint"}  # see check_samples
    if canonical(given) != canonical(stored):
        raise StoreError(
            f"the run's {key} {_describe(given, stored)} does not match the store "
            f"{where}; {fix}"
        )


def _describe(given: Any, stored: Any) -> str:
    """'X (store: Y)', naming only the differing keys when both are dicts."""
    if isinstance(given, dict) and isinstance(stored, dict):
        keys = sorted(
            k
            for k in set(given) | set(stored)
            if canonical(given.get(k)) != canonical(stored.get(k))
        )
        parts = [f"{k}={given.get(k)!r} (store: {stored.get(k)!r})" for k in keys]
        return "differs in " + ", ".join(parts)
    return f"{given!r} (store: {stored!r})"


__all__ = ["FINGERPRINT_VERSION", "check_compatible", "check_run", "check_samples",
           "data_section", "fingerprint_difference", "section_differences",
           "split_fingerprint"]
