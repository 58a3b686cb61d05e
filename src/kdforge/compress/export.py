"""ONNX export of a float model, an ``nn.Module`` over an ONNX Runtime session, and checks.

:func:`export_onnx` uses PyTorch's dynamo-based exporter (``torch.onnx.export(...,
dynamo=True)``, the default since torch 2.9; checked on torch 2.14): the model is captured
with ``torch.export`` and translated op by op, batch-norm folded into the convolutions by
the exporter's optimiser, the batch dimension left symbolic (``"batch"``), the weights
inside the one ``.onnx`` file. The file is then validated by ``onnx.checker``.

:func:`check_onnx` runs the file with ONNX Runtime on given inputs and compares its logits
with PyTorch's: the share of identical top-1 predictions and the largest absolute logit
difference.

:func:`torch_export` writes ``torch.export.save``'s ``.pt2`` archive, an optional extra
artefact. kdforge never loads it: ``torch.export.load`` (torch 2.14,
``torch/export/pt2_archive/_package.py``) unpickles every weight or constant whose entry the
archive itself marks ``use_pickle`` (``torch.load(..., weights_only=False)``) and opaque
constants with ``pickle.loads``, so a crafted ``.pt2`` file can run code.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kdforge.core.errors import CheckpointError, CompressionError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_example(example: Tensor, rows: int = 2) -> Tensor:
    """``example`` with at least ``rows`` rows (a batch of one would fix the batch size of
    a ``torch.export`` graph to 1)."""
    example = example.detach().cpu().float()
    if example.shape[0] >= rows:
        return example
    return torch.cat([example[:1]] * rows)


def failure_reason(exc: BaseException, limit: int = 600) -> str:
    """A short reason from an exporter's or compiler's exception: its first line, the op
    it was executing and the user's source line it came from, where the message says so
    (the ONNX exporter's "Exception summary" when it gives one)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = [re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>", r"\1", ln) for ln in lines
               if ln.startswith("<class ")]
    if summary:
        return " | ".join(summary)[:limit]
    keep = lines[:1]
    for ln in lines[1:]:
        if ln.startswith(("While executing", "File ")) or re.search(r"\w+::\w+|aten\.\w+", ln):
            keep.append(ln)
        if len(keep) >= 4:
            break
    reason = f"{type(exc).__name__}: " + " | ".join(keep) if keep else type(exc).__name__
    return reason[:limit]


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *,
                dynamic_batch: bool = True, opset: int | None = None) -> Path:
    """Write ``model`` (float, in eval mode) as ONNX to ``path``, one self-contained file
    with input ``"input"`` and output ``"logits"``; the batch size is symbolic unless
    ``dynamic_batch=False``. An export the exporter or ``onnx.checker`` refuses raises
    :class:`CompressionError` naming the op."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = export_example(example) if dynamic_batch else example.detach().cpu().float()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu(), (x,), str(path), dynamo=True, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=shapes, opset_version=opset, verbose=False)
    except Exception as exc:
        raise CompressionError(f"ONNX export of {type(model).__name__} failed "
                               f"({failure_reason(exc)}); replace that op/layer with one "
                               "ONNX has, or skip the onnx stage") from None
    finally:
        model.train(was_training)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompressionError(f"the ONNX export of {type(model).__name__} at {str(path)!r} "
                               f"is invalid ({failure_reason(exc)})") from None
    return path


def session_options(threads: int = 1) -> Any:
    """ONNX Runtime session options with ``threads`` intra-op threads and one inter-op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime (CPU) as an ``nn.Module``: a float torch batch in,
    torch logits out. The model's bytes are held in memory (the file may go away) and are
    what :func:`kdforge.compress.quantize.file_bytes` counts. Not trainable: ``parameters()``
    is empty and ``train()``/``eval()`` only set the flag. ``quant_route`` names the int8
    route that made it (``None``: a float export)."""

    quant_route: str | None = None

    def __init__(self, path: str | os.PathLike | None = None, *, threads: int = 1,
                 model_bytes: bytes | None = None) -> None:
        super().__init__()
        if model_bytes is None:
            if path is None or not Path(path).is_file():
                raise CompressionError(f"no ONNX file at {str(path)!r}; export the model first")
            model_bytes = Path(path).read_bytes()
        self.model_bytes = model_bytes
        self.threads = int(threads)
        try:
            self._start()
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, ...: its own classes
            raise CheckpointError(f"ONNX Runtime cannot load {str(path or 'the ONNX model')!r} "
                                  f"({str(exc).splitlines()[0] if str(exc) else exc!r}); the "
                                  "file is not a valid ONNX model: export it again (kdforge "
                                  "compress --overwrite)") from None

    def _start(self) -> None:
        import onnxruntime as ort

        self.__dict__["session"] = ort.InferenceSession(
            self.model_bytes, session_options(self.threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        """``x``: a float batch (any device); returns the logits on the CPU."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def train(self, mode: bool = True) -> OnnxModule:
        self.training = mode
        return self

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.model_bytes)
        return path

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy: drop the session, rebuild it
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._start()


def _batches(data: Any, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
    elif isinstance(data, (list, tuple)) and all(isinstance(b, Tensor) for b in data):
        yield from data
    else:
        from kdforge.data.loaders import eval_loader, to_batch

        for raw in eval_loader(data, batch_size):
            yield to_batch(raw).inputs


@torch.no_grad()
def check_onnx(path: str | os.PathLike, model: nn.Module, data: Any, *, batch_size: int = 64,
               threads: int = 1) -> dict[str, float]:
    """Run the ONNX file at ``path`` with ONNX Runtime and ``model`` with PyTorch on ``data``
    (a data set, a list of batches or one batch tensor): ``{"agreement_with_pytorch":
    percent identical top-1, "max_abs_logit_diff": float, "samples": n}``."""
    runtime = OnnxModule(path, threads=threads)
    was_training = model.training
    model.eval()
    same, total, diff = 0, 0, 0.0
    try:
        for x in _batches(data, batch_size):
            ours = runtime(x).float()
            theirs = model(x.cpu())
            theirs = (theirs.logits if hasattr(theirs, "logits") else theirs).float().cpu()
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += x.shape[0]
            diff = max(diff, float((ours - theirs).abs().max()))
    finally:
        model.train(was_training)
    if total == 0:
        raise CompressionError("check_onnx got no inputs; give a data set or batches")
    return {"agreement_with_pytorch": 100.0 * same / total, "max_abs_logit_diff": diff,
            "samples": total}


class TorchExport(NamedTuple):
    """What :func:`torch_export` did: the ``.pt2`` file, or ``None`` and why not."""

    path: Path | None
    skipped: str | None


def torch_export(model: nn.Module, example: Tensor, path: str | os.PathLike) -> TorchExport:
    """``torch.export.save`` of ``model`` (eval mode, symbolic batch) to ``path``: an
    optional artefact for PyTorch runtimes (AOTInductor, ExecuTorch). A model that
    ``torch.export`` cannot capture is skipped with the reason, not an error. See the
    module docstring for why kdforge itself never loads these files."""
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model.cpu(), (export_example(example),),
                                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    except Exception as exc:
        return TorchExport(None, f"torch.export cannot capture {type(model).__name__} "
                                 f"({failure_reason(exc)})")
    finally:
        model.train(was_training)
    return TorchExport(path, None)


__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxModule", "TorchExport", "check_onnx",
           "export_example", "export_onnx", "failure_reason", "session_options",
           "torch_export"]
