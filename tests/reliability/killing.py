"""Kill-and-resume harness: run real ``kdforge`` processes, kill them, compare run trees.

Used by ``tests/reliability/test_kill_resume.py`` (a few kill points) and by
``benchmarks/kill_stress.py`` (many). A process is killed with ``SIGKILL`` at a named fault
point (``KDFORGE_FAULT``, see :mod:`kdforge.core.faults`) or from outside at a random time;
the resumed tree must equal the tree of a run that was never interrupted: every tensor of
every ``.safetensors`` file bit for bit, every JSON / JSONL / YAML file equal once timing
fields (and the two trees' own paths) are left out, every other file byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
#: Fields that measure time, not what was trained: they differ between any two runs.
TIMING = {"epoch_time_s", "samples_per_s", "train_time_s", "train_seconds", "latency_ms",
          "seconds", "teacher_seconds", "views_per_s"}
SKIPPED_SUFFIXES = {".md", ".png", ".html"}  # reports of the JSON that is compared


def kdforge(*args: str, fault: str | None = None, log: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m kdforge.cli ARGS`` (one thread), optionally with a fault plan."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("KDFORGE_FAULT", None)
    env.pop("KDFORGE_FAULT_LOG", None)
    if fault:
        env["KDFORGE_FAULT"] = fault
    if log is not None:
        env["KDFORGE_FAULT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "kdforge.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    """Start ``python -m kdforge.cli ARGS`` without waiting (to kill it from outside)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("KDFORGE_FAULT", None)
    env.pop("KDFORGE_FAULT_LOG", None)
    return subprocess.Popen([sys.executable, "-m", "kdforge.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- configs: tiny, deterministic, CPU ------------------------------------------------------------

def train_config(out: Path, name: str = "run", epochs: int = 3, **sections: Any) -> dict:
    """A synthetic run: 96 training samples, 3 steps an epoch, no latency measurement."""
    cfg: dict[str, Any] = {
        "name": name, "output_dir": str(out), "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "num_train": 128, "num_test": 64,
                 "num_classes": 4, "val_fraction": 0.25},
        "student": {"name": "mlp", "hidden": [16]},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": epochs, "device": "cpu", "latency": False, "tensorboard": False},
    }
    cfg.update(sections)
    return cfg


def scheme_config(out: Path, generations: int = 2, epochs: int = 2) -> dict:
    """Born-again networks (a sequence scheme): ``generations`` stages of ``epochs``."""
    return train_config(out, name="ban", epochs=epochs, losses=[{"name": "kd", "T": 2}],
                        scheme={"name": "ban", "generations": generations})


def compress_config(out: Path, run: Path, epochs: int = 2) -> dict:
    """Unstructured pruning (fine-tuned), then int8 PTQ; chains ``none`` and ``kd``."""
    return {"name": "pipe", "output_dir": str(out), "run": str(run), "seed": 0,
            "stages": [{"name": "prune", "method": "unstructured", "amount": 0.5},
                       {"name": "int8", "finetune": False, "route": "pt2e",
                        "route_options": {"pt2e": {"compile": False}}}],
            "finetune": {"epochs": epochs, "device": "cpu", "batch_size": 32,
                         "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
            "chains": {"none": [], "kd": [{"name": "kd", "T": 4}]},
            "latency": {"batches": [1], "warmup": 1, "repeats": 2, "rounds": 1}}


def store_config(out: Path, teacher: Path, data: dict) -> dict:
    """A soft-label store of the synthetic data: 3 shards of 40 samples x 4 views."""
    return {"name": "store", "output_dir": str(out), "seed": 0, "data": data,
            "teacher": {"run": str(teacher)}, "device": "cpu",
            "view": {"name": "consistent"},
            "store": {"views_per_sample": 4, "top_k": 3, "samples_per_shard": 40,
                      "batch_size": 64}}


# -- comparing trees ------------------------------------------------------------------------------

def strip_timing(obj: Any) -> Any:
    """``obj`` without the fields that measure time (recursively)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items()
                if k not in TIMING and not str(k).startswith("latency_ms")}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def _text(path: Path, root: Path) -> Any:
    text = path.read_text().replace(str(root.resolve()), "ROOT").replace(str(root), "ROOT")
    if path.suffix == ".jsonl":
        return [strip_timing(json.loads(line)) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        return strip_timing(json.loads(text))
    return strip_timing(yaml.safe_load(text))


def temporaries(root: Path) -> list[str]:
    """Leftovers of killed atomic writes (``.NAME.RANDOM.tmp``) under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def tree_differences(expected: Path, got: Path) -> list[str]:
    """Every way the tree ``got`` differs from ``expected`` (empty: the same)."""
    a, b = _files(expected), _files(got)
    problems = [f"missing {name}" for name in sorted(set(a) - set(b))]
    problems += [f"extra {name}" for name in sorted(set(b) - set(a))]
    for name in sorted(set(a) & set(b)):
        pa, pb = a[name], b[name]
        if pa.suffix in SKIPPED_SUFFIXES:
            continue
        if pa.suffix == ".safetensors":
            ta, tb = load_file(pa), load_file(pb)
            if sorted(ta) != sorted(tb):
                problems.append(f"{name}: tensors {sorted(ta)} != {sorted(tb)}")
                continue
            bad = [k for k in ta if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape
                   or not _bits_equal(ta[k], tb[k])]
            if bad:
                problems.append(f"{name}: tensors differ: {bad[:5]}")
        elif pa.suffix in (".json", ".jsonl", ".yaml"):
            if _text(pa, expected) != _text(pb, got):
                problems.append(f"{name}: contents differ")
        elif pa.read_bytes() != pb.read_bytes():
            problems.append(f"{name}: bytes differ")
    return problems


def _bits_equal(x, y) -> bool:
    """Bit-identical (NaNs and signed zeros included): compare the raw bytes."""
    import torch

    return torch.equal(x.contiguous().view(-1).view(torch.uint8),
                       y.contiguous().view(-1).view(torch.uint8))


__all__ = ["ROOT", "TIMING", "compress_config", "kdforge", "scheme_config", "start",
           "store_config", "strip_timing", "temporaries", "train_config", "tree_differences",
           "write_yaml"]
