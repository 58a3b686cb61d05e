"""Magnitude pruning of a trained model: weight masks (unstructured) or channel removal.

Unstructured (Han, Pool, Tran, Dally 2015, "Learning both Weights and Connections for
Efficient Neural Networks", NeurIPS): the ``amount`` fraction of the weights of smallest
``|w|``, ranked globally over every Conv/Linear but the classifier, are zeroed. The masks
stay as ``torch.nn.utils.prune`` reparametrisations (``weight = weight_orig * weight_mask``)
so that a fine-tune keeps them at zero; :func:`make_permanent` bakes them in. Unstructured
sparsity does NOT speed up dense kernels: the parameter count, the latency and (unless the
file is compressed) the file size stay those of the dense model; only the zeros grow.

Structured (Li, Kadav, Durdanovic, Samet, Graf 2017, "Pruning Filters for Efficient
ConvNets", ICLR: filters ranked by the L1 norm of their weights; Fang, Ma, Song, Mi, Wang
2023, "DepGraph: Towards Any Structural Pruning", CVPR: the dependency graph that removes a
channel from every layer coupled to it, e.g. both sides of a residual add): channels are
really removed, so the network is smaller and faster. torch-pruning's ``MetaPruner`` with
``MagnitudeImportance(p=1)`` (the L1 norm of a channel, averaged over its coupled layers)
does the removal; the final classifier's outputs are never pruned.

A cumulative pruning ratio ``r`` keeps ``round_to * ceil(c (1 - r) / round_to)`` of a
layer's ``c`` original channels (at least ``round_to``; a layer with ``c <= round_to``
is left as it is), so every pruned layer's width is a multiple of ``round_to``. The ratio
that meets a parameter budget is found by bisection over the ratios at which some layer's
rounded width changes (the count is constant in between), each candidate pruned in one
shot on a deep copy; the model itself is then pruned in ``steps`` equal steps up to it,
which lands on exactly the same widths. A latency budget prunes in ``steps`` steps towards
the smallest model (every layer at ``round_to``), measuring the median CPU latency after
each and stopping at the first under the budget.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from kdforge.core.errors import CompressionError, ConfigError, unknown_name_message
from kdforge.engine.metrics import measure_latency
from kdforge.models import count_parameters

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
UNSTRUCTURED_NOTE = ("unstructured sparsity does not speed up dense kernels: parameters and "
                     "latency are unchanged, only the count of zeros grows (and the file "
                     "shrinks only if compressed)")


# ------------------------------------------------------------------------------ helpers

def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _last_linear(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _check_names(model: nn.Module, names: list[str], option: str, *,
                 containers: bool = False) -> list[str]:
    """The Conv/Linear layers ``names`` give (with ``containers``: also those inside a named
    block); an unknown name -> ConfigError."""
    layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    valid = [n for n, _ in model.named_modules() if n] if containers else layers
    for name in names:
        if name not in valid:
            raise ConfigError(f"{option}: {unknown_name_message('layer', name, valid)}; give "
                              "module names as model.named_modules() lists them")
    return [n for n in layers if any(n == g or n.startswith(g + ".") for g in names)]


def _forward(model: nn.Module, x: Tensor, pruned: bool) -> tuple[Any, str | None]:
    """``model(x)`` without grad, and the last Conv/Linear it ran (the one producing the
    logits); a failure -> CompressionError naming the innermost layer that raised."""
    stack: list[str] = []
    ran: list[str] = []

    def enter(m: nn.Module, _a: Any, name: str) -> None:
        stack.append(name)
        ran.extend([name] if isinstance(m, PRUNABLE) else [])

    def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
        stack.pop()

    hooks = []
    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda m, a, n=name: enter(m, a, n)))
        hooks.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad():
            return _shape(model(x)), (ran[-1] if ran else None)
    except Exception as exc:  # any op the pruned widths break
        where = f"layer {stack[-1]!r}" if stack and stack[-1] else "the model's own forward"
        what = (f"torch-pruning cannot shrink {where}: with channels removed it fails"
                if pruned else f"example_inputs do not fit the model: {where} fails")
        fix = ("; list the layers feeding it in 'ignored'" if pruned
               else "; give a batch the model accepts")
        raise CompressionError(f"{what} on inputs of shape {tuple(x.shape)} "
                               f"({type(exc).__name__}: {exc}){fix}") from exc
    finally:
        for h in hooks:
            h.remove()


def _shape(out: Any) -> Any:
    out = getattr(out, "logits", out)
    if isinstance(out, dict):
        return {k: _shape(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [_shape(v) for v in out]
    return tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__


# ------------------------------------------------------------------------- unstructured

def _default_layers(model: nn.Module) -> list[str]:
    classifier = _last_linear(model)
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n != classifier]


def sparsity(model: nn.Module, layers: list[str] | None = None) -> float:
    """Fraction of zeros among the (effective, masked) weights of ``layers``, by default
    every Conv/Linear but the classifier (the last ``nn.Linear``)."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for name in _default_layers(model) if layers is None else layers:
        m = modules[name]
        w = getattr(m, "weight_orig", None)
        w = m.weight if w is None else w * m.weight_mask
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def prune_unstructured(model: nn.Module, amount: float, *,
                       layers: list[str] | None = None) -> dict[str, Any]:
    """Zero the ``amount`` fraction of smallest-``|w|`` weights, ranked globally over
    ``layers`` (default: every Conv1d/Conv2d/Linear but the classifier, the last
    ``nn.Linear``, which stays dense), in place, as ``torch.nn.utils.prune`` masks.

    Returns ``{"sparsity": zeros / weights over the pruned tensors, "layers": [names],
    "amount", "note"}``; the note says that this does not make dense kernels faster.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ConfigError(f"unstructured pruning: amount must be a fraction in (0, 1) of the "
                          f"weights to zero (e.g. 0.8); got {amount!r}")
    names = _default_layers(model) if layers is None else _check_names(model, layers, "layers")
    if not names:
        raise ConfigError("unstructured pruning: the model has no Conv/Linear layer to prune "
                          "besides its classifier; name the layers to prune in 'layers'")
    modules = dict(model.named_modules())
    torch_prune.global_unstructured([(modules[n], "weight") for n in names],
                                    pruning_method=torch_prune.L1Unstructured,
                                    amount=float(amount))
    return {"method": "unstructured", "amount": float(amount),
            "sparsity": sparsity(model, names), "layers": names, "note": UNSTRUCTURED_NOTE}


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove every pruning reparametrisation: ``weight`` becomes a plain tensor that keeps
    its zeros (no ``weight_orig``, no ``weight_mask``). Returns ``model``."""
    for module in model.modules():
        for name in [n[:-5] for n, _ in module.named_parameters(recurse=False)
                     if n.endswith("_orig")]:
            torch_prune.remove(module, name)
    return model


# --------------------------------------------------------------------------- structured

def _keep(c: int, r: float, round_to: int) -> int:
    """Channels of an original ``c`` kept at cumulative ratio ``r`` (module docstring)."""
    if c <= round_to:
        return c
    return min(c, max(round_to, round_to * math.ceil(c * (1.0 - r) / round_to - 1e-9)))


def _breakpoints(widths: list[int], round_to: int) -> list[float]:
    """The ratios at which some layer's kept width changes, ascending, from 0."""
    points = {0.0}
    for c in widths:
        if c > round_to:
            points.update(1.0 - k * round_to / c for k in range(1, math.ceil(c / round_to)))
    return sorted(points)


def _check_structured(params_ratio, latency_ms, latency_batch, round_to, steps) -> None:
    if params_ratio is None and latency_ms is None:
        raise ConfigError("structured pruning needs a target: give params_ratio (e.g. 0.5: "
                          "keep at most half the parameters) or latency_ms (a CPU budget)")
    if params_ratio is not None and not 0 < params_ratio <= 1:
        raise ConfigError(f"structured pruning: params_ratio must be in (0, 1], the share of "
                          f"parameters to keep (e.g. 0.5); got {params_ratio!r}")
    if latency_ms is not None and not latency_ms > 0:
        raise ConfigError(f"structured pruning: latency_ms must be a positive budget in "
                          f"milliseconds; got {latency_ms!r}")
    for option, value in (("latency_batch", latency_batch), ("round_to", round_to),
                          ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"structured pruning: {option} must be a positive int "
                              f"(round_to 1 disables rounding); got {value!r}")


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ConfigError("structured pruning needs torch-pruning: pip install "
                          "'torch-pruning>=1.6'") from None
    return torch_pruning


class _Pruner:
    """Prunes a module (the model or a deep copy of it) to a cumulative ratio of the
    original widths ``init``: each call is one torch-pruning step on a fresh graph."""

    def __init__(self, model: nn.Module, x: Tensor, skip: set[str], round_to: int) -> None:
        self.x, self.skip, self.round_to = x, skip, round_to
        self.init = {n: _width(m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
        self.prunable = [n for n in self.init if n not in skip]

    def __call__(self, net: nn.Module, ratio: float) -> None:
        tp = _torch_pruning()
        modules = dict(net.named_modules())
        ratios = {}
        for n in self.prunable:
            now, want = _width(modules[n]), _keep(self.init[n], ratio, self.round_to)
            if want < now:  # int(now * (1 - r)) == want in torch-pruning's count
                ratios[modules[n]] = (now - want - 0.5) / now
        if not ratios:
            return
        try:
            pruner = tp.pruner.MetaPruner(
                net, self.x, importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=0.0, pruning_ratio_dict=ratios, round_to=self.round_to,
                ignored_layers=[modules[n] for n in self.skip])
        except Exception as exc:  # the library's tracing error, whatever its type
            raise CompressionError(
                f"torch-pruning cannot trace {type(net).__name__} on inputs of shape "
                f"{tuple(self.x.shape)}: {type(exc).__name__}: {exc}") from exc
        names = {m: n for n, m in net.named_modules()}
        for group in pruner.step(interactive=True):
            root = group[0].dep.target.module
            try:
                group.prune()
            except Exception as exc:
                raise CompressionError(
                    f"torch-pruning cannot shrink layer {names.get(root, type(root).__name__)!r}"
                    f": {type(exc).__name__}: {exc}; list it in 'ignored'") from exc
        _forward(net, self.x, pruned=True)  # a width the graph missed fails here, named


def _latency(model: nn.Module, x: Tensor, batch: int) -> float:
    device = next(model.parameters()).device
    inputs = x[:1].detach().cpu().expand(batch, *x.shape[1:]).contiguous()
    try:
        return measure_latency(model, inputs, device="cpu")
    finally:
        model.to(device)


def prune_structured(model: nn.Module, example_inputs: Tensor, *,
                     params_ratio: float | None = None, latency_ms: float | None = None,
                     latency_batch: int = 1, round_to: int = 8, steps: int = 5,
                     ignored: list[str] | None = None) -> dict[str, Any]:
    """Remove whole channels in place until the model has at most ``params_ratio`` of its
    parameters and/or its median CPU latency at ``latency_batch`` is at most
    ``latency_ms`` (at least one target). ``example_inputs``: a batch the model accepts
    (traced by torch-pruning). ``ignored``: layers whose outputs keep their width (the
    classifier always does). See the module docstring for the schedule and the rounding.

    Returns ``{"params_before", "params_after", "params_ratio", "pruning_ratio",
    "channels": {layer: (before, after)}, "unpruned": [layers with <= round_to channels,
    left as they were], "latency_ms_before", "latency_ms_after"}`` (latencies only when
    ``latency_ms`` is given).

    Raises:
        ConfigError: no target, a target or option out of range, an unknown layer name.
        CompressionError: an unreachable target (naming the best reached and the budget),
            a model torch-pruning cannot trace or a layer it cannot shrink.
    """
    _check_structured(params_ratio, latency_ms, latency_batch, round_to, steps)
    if not isinstance(example_inputs, Tensor):
        raise ConfigError("structured pruning: example_inputs must be one input batch "
                          f"(a tensor); got {type(example_inputs).__name__}")
    was_training = model.training
    model.eval()  # tracing must not update batch-norm statistics
    try:
        return _prune_structured(model, example_inputs, params_ratio, latency_ms,
                                 latency_batch, round_to, steps, list(ignored or []))
    finally:
        model.train(was_training)


def _needed_ratio(model: nn.Module, prune_to: _Pruner, budget: float) -> float:
    """The smallest ratio whose one-shot prune keeps at most ``budget`` parameters, by
    bisection over the width breakpoints (the count is monotone and constant in between)."""
    points = _breakpoints([prune_to.init[n] for n in prune_to.prunable], prune_to.round_to)
    lo, hi = 0, len(points) - 1  # points[hi] (the smallest model) meets it: checked before
    while hi - lo > 1:
        mid = (lo + hi) // 2
        net = copy.deepcopy(model)
        prune_to(net, points[mid])
        lo, hi = (lo, mid) if count_parameters(net) <= budget else (mid, hi)
    return points[hi]


def _prune_structured(model, example, params_ratio, latency_ms, batch, round_to, steps,
                      ignored) -> dict[str, Any]:
    x = example.to(next(model.parameters()).device)
    shape_before, classifier = _forward(model, x, pruned=False)
    skip = set(_check_names(model, ignored, "ignored", containers=True)) | ({classifier} - {None})
    prune_to = _Pruner(model, x, skip, round_to)
    before = count_parameters(model)
    budget = None if params_ratio is None else params_ratio * before

    # the smallest model (every prunable layer at round_to): is the target reachable?
    smallest = copy.deepcopy(model)
    prune_to(smallest, 1.0)
    widths = {n: _width(m) for n, m in smallest.named_modules() if n in prune_to.init}
    stuck = [n for n in prune_to.prunable if widths[n] == prune_to.init[n] > round_to]
    why = (f"; torch-pruning could not shrink {stuck} (outside the graph traced from input "
           "to output, or coupled to an ignored layer)" if stuck else "")
    least = count_parameters(smallest)
    if budget is not None and least > budget:
        raise CompressionError(
            f"structured pruning cannot reach params_ratio {params_ratio}: the smallest model "
            f"(every prunable layer at {round_to} channels) keeps {least} of {before} "
            f"parameters ({least / before:.3f}){why}; raise params_ratio or lower round_to")
    lat_before = lat = None
    if latency_ms is not None:
        lat_before, lat_min = _latency(model, x, batch), _latency(smallest, x, batch)
        lat = lat_before
        if lat_min > latency_ms:
            raise CompressionError(
                f"structured pruning cannot reach latency_ms {latency_ms} at batch {batch}: "
                f"the smallest model (every prunable layer at {round_to} channels) runs in "
                f"{lat_min:.3f} ms, the unpruned one in {lat_before:.3f} ms{why}; raise "
                "latency_ms, lower round_to or start from a smaller architecture")
    del smallest

    # the schedule: `steps` steps up to the parameter target, then (for a latency budget
    # still missed) `steps` steps from there to the smallest model
    schedule: list[float] = []
    if budget is not None and before > budget:
        needed = _needed_ratio(model, prune_to, budget)
        schedule = [needed * k / steps for k in range(1, steps + 1)]
    if latency_ms is not None and lat_before > latency_ms:
        start = schedule[-1] if schedule else 0.0
        schedule += [start + (1.0 - start) * k / steps for k in range(1, steps + 1)]
    ratio = 0.0
    for ratio in schedule:
        prune_to(model, ratio)
        if budget is not None and count_parameters(model) > budget:
            continue
        if latency_ms is None:
            break
        lat = _latency(model, x, batch)
        if lat <= latency_ms:
            break
    if latency_ms is not None and lat > latency_ms:
        raise CompressionError(
            f"structured pruning missed latency_ms {latency_ms} at batch {batch}: the "
            f"smallest model reached runs in {lat:.3f} ms though it measured under the "
            "budget before (timing noise); raise latency_ms or time on a quieter machine")
    if budget is not None and count_parameters(model) > budget:  # the search guarantees it
        raise CompressionError(f"structured pruning reached {count_parameters(model)} "
                               f"parameters, over the budget {budget:.0f}; report this bug")
    shape_after = _forward(model, x, pruned=True)[0]
    if shape_after != shape_before:
        raise CompressionError(f"structured pruning changed the output shape from "
                               f"{shape_before} to {shape_after}; list the layer producing "
                               "the logits in 'ignored'")
    after = count_parameters(model)
    modules = dict(model.named_modules())
    report: dict[str, Any] = {
        "method": "structured", "params_before": before, "params_after": after,
        "params_ratio": after / before, "pruning_ratio": ratio, "round_to": round_to,
        "channels": {n: (c, _width(modules[n])) for n, c in prune_to.init.items()},
        "unpruned": [n for n in prune_to.prunable if prune_to.init[n] <= round_to],
        "not_shrunk": stuck,
    }
    if latency_ms is not None:
        report.update(latency_ms_before=lat_before, latency_ms_after=lat,
                      latency_batch=batch)
    return report


__all__ = ["PRUNABLE", "UNSTRUCTURED_NOTE", "count_parameters", "make_permanent",
           "prune_structured", "prune_unstructured", "sparsity"]
