"""``kdforge doctor``: versions, devices, threads, and which optional extras work.

Each optional extra of ``pyproject.toml`` (``[project.optional-dependencies]``) is checked
twice: are its packages installed (their distribution metadata), and does a tiny real
operation succeed (an ONNX export of a ``Linear`` run by onnxruntime, a torch-pruning
dependency graph of a small conv net, ...). A check never raises: a failure becomes its
one-line reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

#: the extras a user installs, and their packages when kdforge's metadata is not available
EXTRAS: dict[str, list[str]] = {
    "vision": ["torchvision", "timm"],
    "data": ["scikit-learn", "mnist1d"],
    "export": ["onnx", "onnxscript", "onnxruntime"],
    "compress": ["torch-pruning", "torchao"],
    "tensorboard": ["tensorboard"],
    "shampoo": ["pytorch-optimizer"],
}
CORE = ["torch", "numpy", "pydantic", "pyyaml", "safetensors", "torchmetrics", "rich",
        "matplotlib"]
#: extras that only group others (not checked on their own)
META_EXTRAS = {"all", "dev"}

CHECKS: dict[str, Callable[[], str]] = {}


def check(extra: str):
    """Register the working check of ``extra``: returns a short note, raises on failure."""

    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        CHECKS[extra] = fn
        return fn

    return wrap


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def extras() -> dict[str, list[str]]:
    """Extra -> its distribution names, from kdforge's installed metadata (the
    ``pyproject.toml`` of the installed version), else :data:`EXTRAS`."""
    try:
        requires = metadata.requires("kdforge") or []
    except metadata.PackageNotFoundError:
        return dict(EXTRAS)
    found: dict[str, list[str]] = {}
    for requirement in requires:
        match = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if not match or match[1] in META_EXTRAS:
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        if name and not name[0].startswith("kdforge"):
            found.setdefault(match[1], []).append(name[0])
    return found or dict(EXTRAS)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(),
                                  "kdforge": version("kdforge")}
    for dist in CORE:
        out[dist] = version(dist)
    for packages in extras().values():
        for dist in packages:
            out.setdefault(dist, version(dist))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices() -> dict[str, Any]:
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    out: dict[str, Any] = {
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": affinity, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_devices": [],
        "mps_available": bool(getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()),
    }
    if out["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["cuda_devices"].append({"index": i, "name": p.name,
                                        "capability": f"{p.major}.{p.minor}",
                                        "memory_gib": round(p.total_memory / 2**30, 1)})
    return out


# -- the checks of each extra --------------------------------------------------------------------

@check("vision")
def _vision() -> str:
    import timm
    import torch
    import torchvision

    x = torch.rand(1, 3, 32, 32)
    flipped = torchvision.transforms.functional.hflip(x)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        y = model(flipped)
    assert y.shape == (1, 3)
    return "torchvision hflip, timm resnet10t forward"


@check("data")
def _data() -> str:
    import mnist1d.data as m1d
    from sklearn.datasets import load_digits

    digits = load_digits()
    args = m1d.get_dataset_args()
    assert digits.images.shape[1:] == (8, 8) and args.num_samples > 0
    return "scikit-learn digits loaded, mnist1d arguments"


@check("export")
def _export() -> str:
    import numpy as np
    import onnxruntime
    import torch

    model = torch.nn.Linear(4, 2).eval()
    x = torch.rand(1, 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "linear.onnx")
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False,
                          input_names=["input"], output_names=["logits"], verbose=False)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(y, model(x).detach().numpy(), atol=1e-5)
    return "Linear exported (dynamo) and run by onnxruntime"


@check("compress")
def _compress() -> str:
    import torch
    import torch_pruning as tp
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.rand(1, 1, 8, 8))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[0])
    group.prune()
    assert net[0].out_channels == 3 and net[2].in_channels == 3
    X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    return "torch-pruning DepGraph pruned a channel, torchao pt2e x86 quantizer"


@check("tensorboard")
def _tensorboard() -> str:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(log_dir=tmp)
        writer.add_scalar("check", 1.0, 0)
        writer.close()
        assert list(Path(tmp).glob("events.out.tfevents.*"))
    return "SummaryWriter wrote an event file"


@check("shampoo")
def _shampoo() -> str:
    import torch
    from pytorch_optimizer import Shampoo

    model = torch.nn.Linear(3, 2)
    opt = Shampoo(model.parameters(), lr=0.1)
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    return "Shampoo step on a Linear"


@contextlib.contextmanager
def _quiet():
    """No warnings and no chatter (the ONNX exporter prints its progress) from a check."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_extras() -> list[dict[str, Any]]:
    """One row per extra: packages and versions, installed, works, note, seconds."""
    rows = []
    for extra, packages in extras().items():
        found = {p: version(p) for p in packages}
        installed = all(v is not None for v in found.values())
        row: dict[str, Any] = {"extra": extra, "packages": found, "installed": installed,
                               "works": False, "note": "", "seconds": 0.0}
        if not installed:
            missing = ", ".join(p for p, v in found.items() if v is None)
            row["note"] = f"missing {missing}: pip install 'kdforge[{extra}]'"
        elif extra not in CHECKS:
            row["works"], row["note"] = None, "no check for this extra"
        else:
            start = time.perf_counter()
            try:
                with _quiet():
                    row["note"], row["works"] = CHECKS[extra](), True
            except BaseException as exc:  # noqa: BLE001 (a check must never stop the doctor)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                row["note"] = _reason(exc)
            row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows


def diagnose() -> dict[str, Any]:
    """Everything ``kdforge doctor`` prints, as a JSON-ready dict."""
    return {"versions": versions(), "devices": devices(), "extras": check_extras(),
            "executable": sys.executable}


__all__ = ["CHECKS", "EXTRAS", "check", "check_extras", "devices", "diagnose", "extras",
           "versions"]
