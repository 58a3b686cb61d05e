"""The exceptions kdforge raises on bad input.

Every message says what was wrong and what to do about it; the CLI prints them without a
traceback. All derive from :class:`KDForgeError`, so ``except kdforge.KDForgeError`` catches
every problem the library diagnosed itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KDForgeError(Exception):
    """Base class of every error kdforge diagnoses itself."""


class ConfigError(KDForgeError, ValueError):
    """A configuration value, name or key is wrong (unknown model, layer, loss, config key)."""


class ShapeMismatchError(ConfigError):
    """Teacher and student (or a loss term) disagree on a tensor shape before training."""


class DataError(KDForgeError):
    """A data set file or folder is missing, malformed or inconsistent."""


class CheckpointError(KDForgeError):
    """A checkpoint or run directory cannot be read, or does not match the run."""


class RunDirError(KDForgeError, OSError):
    """An output directory cannot take a run's files: it is a file, it is not writable, or
    the disk is full; the message names the path and says to free space or choose another
    ``output_dir``."""


class StoreError(KDForgeError):
    """A soft-label store is missing, corrupt, or does not match the run that reads it."""


class CompressionError(KDForgeError):
    """A compression stage cannot apply to the model (a layer it cannot shrink, an op with
    no quantized kernel, an export that fails); the message names the layer and why."""


class NonFiniteLossError(KDForgeError, FloatingPointError):
    """The loss became NaN or infinite during training."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (for 'did you mean' messages).

    Falls back to candidates that contain ``name`` (or its last dotted part) when the
    sequence matcher finds nothing, and finally to the first candidates, so a message
    always shows the user some valid names.
    """
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:
        tail = name.rsplit(".", 1)[-1]
        found = [c for c in candidates if tail and tail in c][:n]
    if not found:
        found = candidates[:n]
    return found


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    """Message for an unknown ``name`` of a given ``kind``, listing the closest valid ones."""
    candidates = list(candidates)
    near = closest(name, candidates)
    hint = ", ".join(repr(c) for c in near) if near else "(none are available)"
    return f"unknown {kind} {name!r}; closest valid names: {hint} ({len(candidates)} in all)"
