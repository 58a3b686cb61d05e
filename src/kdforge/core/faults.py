"""Deterministic fault injection: SIGKILL this process at a named point, for crash tests.

kdforge promises that a run killed at any moment loses nothing: ``--resume`` continues from
the last complete state and ends with the same weights and metrics as a run that was never
interrupted. The tests (``tests/reliability/test_kill_resume.py``) and the stress script
(``benchmarks/kill_stress.py``) check that promise by killing real ``kdforge`` processes at
the points named here. :func:`fault_point` does nothing unless the environment variable
``KDFORGE_FAULT`` is set when it is first called; it is read once, so a call costs one
``is None`` test in a normal run.

``KDFORGE_FAULT`` is a comma-separated list of ``NAME:N`` items: the process sends itself
``SIGKILL`` at the ``N``-th time (1-based) it reaches point ``NAME``. The points:

==================  ============================================================================
``run-start``       a run's directory and ``config.yaml`` exist, nothing is trained yet
                    (``api.Run``)
``step``            after every optimizer step of the trainer (mid-epoch)
``write``           every atomic file write (``core.files``, the store's shards), after the
                    temporary file is written and before it is renamed over the target
``write/FILE``      the same, only for files named ``FILE`` (``write/checkpoint.safetensors``)
``shard``           a soft-label store shard is in place, its checksum sidecar not yet
``stage``           a sequence scheme is about to start (or read back) one of its stages
``compress-stage``  a compression pipeline is about to start (or read back) one of its stages
==================  ============================================================================

With ``KDFORGE_FAULT_LOG=PATH`` set, the process counts every point it reaches and writes
the counts to ``PATH`` (JSON) when it exits: the stress script learns there how many kill
points a run has.

Example: ``KDFORGE_FAULT=write/checkpoint.safetensors:2 kdforge train cfg.yaml`` dies while
writing the second checkpoint; ``kdforge train --resume RUN_DIR`` continues from the first.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
from collections import Counter

ENV = "KDFORGE_FAULT"
LOG_ENV = "KDFORGE_FAULT_LOG"

_UNSET = object()
_plan: dict[str, int] | None | object = _UNSET
_hits: Counter[str] = Counter()


def parse(spec: str) -> dict[str, int]:
    """``"step:5,write:2"`` -> ``{"step": 5, "write": 2}`` (a malformed item is an error:
    a crash test that silently never crashes proves nothing)."""
    plan: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, count = item.rpartition(":")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}={spec!r}: each item must look like NAME:N with N >= 1 "
                             f"(e.g. step:5), got {item!r}")
        plan[name] = int(count)
    return plan


def reload() -> None:
    """Read ``KDFORGE_FAULT`` again and reset the hit counts (for tests in one process)."""
    global _plan
    _plan = _UNSET
    _hits.clear()


def _read_plan() -> dict[str, int] | None:
    spec, log = os.environ.get(ENV, ""), os.environ.get(LOG_ENV, "")
    if not spec and not log:
        return None
    if log:
        atexit.register(_write_log, log)
    return parse(spec)


def _write_log(path: str) -> None:
    with open(path, "w") as f:
        json.dump(dict(_hits), f)


def fault_point(*names: str) -> None:
    """Count a hit of each of ``names``; SIGKILL this process if one reached its planned
    count. Free when ``KDFORGE_FAULT`` is unset."""
    global _plan
    if _plan is None:
        return
    if _plan is _UNSET:
        _plan = _read_plan()
        if _plan is None:
            return
    assert isinstance(_plan, dict)
    for name in names:
        _hits[name] += 1
        if _plan.get(name) == _hits[name]:
            os.kill(os.getpid(), signal.SIGKILL)


def hits() -> dict[str, int]:
    """How often each point was reached so far (counted only while a plan is set)."""
    return dict(_hits)


__all__ = ["ENV", "LOG_ENV", "fault_point", "hits", "parse", "reload"]
