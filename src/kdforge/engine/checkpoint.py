"""Atomic writes of weights, checkpoints and JSON; reading them back with clear errors.

Nothing here unpickles: checkpoints are safetensors files whose structure is JSON. Every
file is written through :func:`kdforge.core.files.atomic_write`, so an interrupted run
never leaves a half-written checkpoint behind: the previous one stays intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kdforge.core.errors import CheckpointError
from kdforge.core.files import atomic_write
from kdforge.models.runs import WEIGHTS

CHECKPOINT = "checkpoint.safetensors"
#: The pickle checkpoint of kdforge before 0.2: recognised, never loaded.
LEGACY_CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEY = "kdforge_checkpoint"
CHECKPOINT_FORMAT = "kdforge-checkpoint"


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """The model's ``state_dict`` as safetensors (tensors made contiguous, shared ones copied)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a resumable checkpoint atomically, in a format that cannot run code.

    ``state`` is a nested structure of dicts (string or integer keys), lists, tuples,
    numbers, strings, ``None``, tensors and numpy arrays (optimizer, scheduler and scaler
    state dicts are). Tensors go into a safetensors file; the structure around them is JSON
    in the file's metadata. Reading it back (:func:`load_checkpoint`) parses JSON and raw
    tensor bytes: nothing is unpickled.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    meta = {CHECKPOINT_KEY: json.dumps({"format": CHECKPOINT_FORMAT, "version": 1,
                                         "sha256": _digest(tensors), "state": skeleton})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no unpickling).

    A run directory that holds only a ``checkpoint.pt`` (the pickle format of kdforge
    before 0.2) is refused with a message: a pickle can execute code when it is loaded.
    """
    path = Path(path)
    legacy = path.with_name(LEGACY_CHECKPOINT)
    if not path.is_file():
        if legacy.is_file():
            raise CheckpointError(
                f"{str(legacy)!r} is a checkpoint in the pickle format of kdforge before 0.2; "
                "kdforge no longer loads pickles because loading one can execute code. Start "
                "the run again (--overwrite); its new checkpoints are safetensors files"
            )
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; --resume takes a run directory that a previous "
            f"run wrote (it holds {CHECKPOINT})"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        header = json.loads(meta[CHECKPOINT_KEY])
        if header.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        if "sha256" in header and header["sha256"] != _digest(tensors):  # older: none
            raise ValueError("its tensors do not match their recorded sha256 (bit rot or a "
                             "partial copy)")
        return _decode(header["state"], tensors)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(exc).__name__}: {exc}); it was not "
            "written by kdforge or the file is damaged. Start a new run (--overwrite)."
        ) from None


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in key order: safetensors
    itself checks no content, so a flipped bit would otherwise load silently."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able skeleton of ``obj``; tensors and arrays are moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise CheckpointError(f"cannot store a {type(k).__name__} dict key in a checkpoint")
        return {"__dict__": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint; keep step "
                          "state to tensors, numbers, strings, lists and dicts")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError(f"unknown checkpoint entry {sorted(obj)}")
    return obj


__all__ = ["CHECKPOINT", "LEGACY_CHECKPOINT", "WEIGHTS", "load_checkpoint", "save_checkpoint",
           "save_weights"]
