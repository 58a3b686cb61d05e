"""``kdforge bench store``: what a soft-label store (FKD, Shen & Xing, ECCV 2022) buys.

One run, one device (the CPU by default), one student, one data set, one schedule:

1. The teacher is trained (or a finished identical run reused) and the store generated
   (:func:`kdforge.jobs.soft_labels.generate`) once per value format. Generation speed is compared
   with a bare teacher pass over the generation's first batches, timed right before and
   right after the main store is made.
2. For every seed, the students ``supervised`` (cross-entropy alone), ``online_kd`` (the
   real teacher runs every step) and ``store_kd_<format>`` (labels read from the store) are
   trained with identical data, batch size, epochs, seed and view, taking turns epoch by
   epoch (:class:`kdforge.api.Run`); after each epoch the teacher forward and the student
   step are timed for the ideal online rate, 1 / (1 / teacher + 1 / student). Ratios are
   medians of per-epoch ratios, so every ratio compares rates taken under the same load.
3. Bytes per stored view, next to FKD's figure.
4. Test accuracy of each run, mean over the seeds.

Results: ``results/store.json`` (one flat key per figure) and ``results/store.md`` (the
figures with their targets, PASS or MISS: :mod:`kdforge.jobs.bench_store_report`). The spec
is :mod:`kdforge.jobs.bench_store_spec`, the timing helpers :mod:`kdforge.jobs.timing`.
Nothing here is asserted by tests.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge import api
from kdforge.config import OptimConfig, SoftLabelConfig, parse_config
from kdforge.data.augment import make_augment
from kdforge.data.loaders import eval_loader
from kdforge.engine.metrics import evaluate
from kdforge.engine.optim import build_optimizer
from kdforge.engine.runtime import resolve_device, seed_everything
from kdforge.jobs.bench_store_report import (
    FKD_BYTES_PER_VIEW,
    RUNS,
    TARGETS,
    store_markdown,
)
from kdforge.jobs.bench_store_spec import load_store_spec
from kdforge.jobs.results import finished_run, write_results
from kdforge.jobs.soft_labels import generate, store_path
from kdforge.jobs.timing import (
    balanced_orders,
    bare_teacher_rate,
    generation_batches,
    steady_rate,
    student_step_rate,
    teacher_forward_rate,
    training_inputs,
)
from kdforge.models.runs import load_run_model

#: Batches of the generation's sizes over which the bare teacher is timed.
BARE_BATCHES = 10
#: Figures measured once per timed epoch, as ratios (medians of these are reported).
PAIRED = ("store_vs_supervised", "store_vs_online", "online_vs_ideal", "teacher_cost_ratio",
          "supervised_vs_student_step", "teacher_forward", "student_step", "ideal_online")


# -- the configs of the runs -------------------------------------------------------------------

#: Loader settings of the timed student runs; the teacher run and the stores ignore them.
_LOADER_KEYS = ("num_workers",)


def _shared_data(spec: dict[str, Any]) -> dict[str, Any]:
    """The data section of the teacher run and the stores: the students' without their
    loader settings, which change neither."""
    return {k: v for k, v in spec["data"].items() if k not in _LOADER_KEYS}


def _teacher_config(spec: dict[str, Any]) -> Any:
    t = spec["teacher"]
    epochs = t["epochs"]
    return parse_config({
        "name": "teacher", "seed": spec["seed"], "output_dir": str(spec["output_dir"]),
        "data": _shared_data(spec), "student": t["model"], "losses": [{"name": "ce"}],
        "optim": t["optim"], "schedule": t["schedule"],
        "train": {"epochs": epochs, "device": spec["device"],
                  "eval_every": max(1, epochs // 4)},
    })


def _student_config(spec: dict[str, Any], name: str, losses: list, teacher: dict | None,
                    view: bool, seed: int) -> Any:
    epochs = spec["epochs"]
    cfg: dict[str, Any] = {
        "name": f"{name}-seed{seed}", "seed": seed, "output_dir": str(spec["output_dir"] / "runs"),
        "data": spec["data"], "student": spec["student"], "losses": losses,
        "optim": spec["optim"], "schedule": spec["schedule"],
        # validation and checkpoints only at the end: they lie outside the epoch timer anyway
        "train": {"epochs": epochs, "device": spec["device"], "eval_every": epochs,
                  "checkpoint_every": epochs},
    }
    if teacher is not None:
        cfg["teacher"] = teacher
    if view:
        cfg["view"] = {"name": "consistent", **spec["augment"]}
    return parse_config(cfg)


def _store_config(spec: dict[str, Any], value_format: str, teacher_run: Path) -> Any:
    s = spec["store"]
    return parse_config({
        "name": value_format, "seed": spec["seed"],
        "output_dir": str(spec["output_dir"] / "stores"), "data": _shared_data(spec),
        "teacher": {"run": str(teacher_run)}, "device": spec["device"],
        "view": {"name": "consistent", **spec["augment"]},
        "store": {"views_per_sample": s["views_per_sample"], "top_k": s["top_k"],
                  "value_format": value_format, "batch_size": s["batch_size"],
                  "samples_per_shard": s["samples_per_shard"]},
    }, kind=SoftLabelConfig)


def _run_configs(spec: dict[str, Any], seed: int, teacher_run: Path,
                 stores: dict[str, dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The configs of one seed's runs: supervised, online_kd and store_kd_<format>."""
    configs = {
        "supervised": _student_config(spec, "supervised", [{"name": "ce"}], None, True, seed),
        "online_kd": _student_config(spec, "online_kd", spec["losses"],
                                     {"run": str(teacher_run)}, True, seed),
    }
    for fmt, stats in stores.items():
        configs[f"store_kd_{fmt}"] = _student_config(
            spec, f"store_kd-{fmt}", spec["losses"], {"store": stats["path"],
                                                      "repeats": repeats}, False, seed)
    return configs


# -- the benchmark -----------------------------------------------------------------------------

def run_store_bench(spec_path: str | Path = "benchmarks/store.yaml", *,
                    results: str | Path | None = None, verbose: bool = True,
                    epochs: int | None = None, regenerate: bool = True) -> dict[str, Any]:
    """Run the store benchmark; return and write (``results``/store.json, store.md) it.

    Args:
        spec_path: the spec (``benchmarks/store.yaml``).
        results: directory for ``store.json`` and ``store.md`` (None: write nothing).
        verbose: print progress.
        epochs: override the students' epochs (smoke runs); the teacher keeps its own.
        regenerate: delete and regenerate the stores, so generation is timed. With False an
            existing store is resumed (finished shards skipped) and the generation figures of
            a store with nothing left to label are None.
    """
    spec = load_store_spec(spec_path)
    if epochs is not None:
        spec["epochs"] = int(epochs)
    device = resolve_device(spec["device"])
    say = _printer(verbose)
    start = time.perf_counter()
    out = _header(spec, spec_path, device)
    teacher, data, teacher_net = _teacher(spec, out, device, say)  # 1. the teacher
    stores = _stores(spec, out, teacher.run_dir, data, teacher_net, device, regenerate, say)
    _student_runs(spec, out, teacher.run_dir, stores, data, teacher_net, device, say)
    main, s = spec["store"]["value_formats"][0], spec["store"]  # 4. size
    out.update({
        "bytes_per_view": stores[main]["bytes_per_view"],
        "bytes_per_sample": stores[main]["bytes_per_view"] * s["views_per_sample"],
        "store_bytes": stores[main]["bytes_per_view"] * len(data.train) * s["views_per_sample"],
        "fkd_bytes_per_view": FKD_BYTES_PER_VIEW,
    })
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        write_results(results, "store", out, store_markdown(out))
    return out


def _header(spec: dict[str, Any], spec_path: str | Path, device: torch.device) -> dict[str, Any]:
    """The settings the results record first."""
    s, timing = spec["store"], spec["timing"]
    formats = s["value_formats"]
    return {
        "spec": str(spec_path), "device": str(device), "torch_threads": torch.get_num_threads(),
        "data": spec["data"]["name"], "student": spec["student"]["name"],
        "teacher": spec["teacher"]["model"]["name"], "epochs": spec["epochs"],
        "batch_size": int(spec["data"].get("batch_size", 128)), "seed": spec["seed"],
        "seeds": ",".join(str(x) for x in spec["seeds"]),
        "losses": ",".join(str(loss.get("name")) for loss in spec["losses"]),
        "views_per_sample": s["views_per_sample"], "top_k": s["top_k"],
        "value_format": formats[0], "value_formats": ",".join(formats),
        "repeats": s["repeats"], "timing_repeats": timing["repeats"],
        "timing_steps": timing["steps"],
    }


def _teacher(spec: dict[str, Any], out: dict[str, Any], device: torch.device,
             say: Callable[[str], None]) -> tuple[api.RunResult, api.Data, nn.Module]:
    """The teacher run (trained, or a finished identical run reused), the data and the
    teacher network on ``device``."""
    teacher_cfg = _teacher_config(spec)
    teacher = finished_run(teacher_cfg)
    out["teacher_reused"] = teacher is not None
    if teacher is None:
        say(f"training the teacher ({teacher_cfg.student.name}, {spec['teacher']['epochs']} "
            "epochs)")
        teacher = api.train(teacher_cfg, overwrite=True, verbose=False)
    out["teacher_accuracy"] = teacher.summary["test"]["accuracy"]
    out["teacher_params"] = teacher.summary["student_params"]
    say(f"teacher: test accuracy {100 * out['teacher_accuracy']:.1f}%"
        + (" (reused)" if out["teacher_reused"] else ""))
    data = api.build_data(teacher_cfg)
    return teacher, data, _teacher_net(teacher.run_dir).to(device)


def _stores(spec: dict[str, Any], out: dict[str, Any], teacher_run: Path, data: api.Data,
            teacher_net: nn.Module, device: torch.device, regenerate: bool,
            say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """2. The stores, one per value format; the bare teacher is timed right before and
    after the main one is made."""
    s, timing = spec["store"], spec["timing"]
    formats, n_train = s["value_formats"], len(data.train)
    main = formats[0]
    sizes = generation_batches(n_train, s["views_per_sample"], s["batch_size"],
                               s["samples_per_shard"])
    gen_inputs = training_inputs(data.train, max(sizes))[0].to(device)

    bare_sizes = sizes[:BARE_BATCHES]  # the generation's first batches: the same rate

    def bare_rate() -> float:
        return bare_teacher_rate(teacher_net, gen_inputs, bare_sizes, timing["repeats"], device)

    stores: dict[str, dict[str, Any]] = {}
    bare: list[float] = []
    for fmt in formats:
        sl_cfg = _store_config(spec, fmt, teacher_run)
        path = store_path(sl_cfg)
        if regenerate and path.exists():
            shutil.rmtree(path)
        if fmt == main:
            bare.append(bare_rate())
        stats = generate(sl_cfg, verbose=False)
        if fmt == main:
            bare.append(bare_rate())
        stores[fmt] = stats
        rate = stats["views_per_s"] if stats["views"] > 0 else None
        out[f"generation_{fmt}_views_per_s"] = rate
        out[f"bytes_per_view_{fmt}"] = stats["bytes_per_view"]
        say(f"store {fmt}: {stats['views']:,} views labelled"
            + (f", {rate:,.0f} views/s" if rate else " (nothing left to label)"))
    gen_rate = out[f"generation_{main}_views_per_s"]
    out.update({
        "num_train": n_train, "store_views": n_train * s["views_per_sample"],
        "generation_batch_size": max(sizes), "bare_views": sum(bare_sizes),
        "generation_views_per_s": gen_rate,
        "bare_teacher_views_per_s": statistics.mean(bare),
        "generation_vs_bare": gen_rate / statistics.mean(bare) if gen_rate else None,
    })
    say(f"bare teacher forward: {out['bare_teacher_views_per_s']:,.0f} views/s"
        + (f"; generation / bare = {out['generation_vs_bare']:.2f}" if gen_rate else ""))
    return stores


def _student_runs(spec: dict[str, Any], out: dict[str, Any], teacher_run: Path,
                  stores: dict[str, dict[str, Any]], data: api.Data, teacher_net: nn.Module,
                  device: torch.device, say: Callable[[str], None]) -> None:
    """3. The training runs of every seed, epoch by epoch in turn, with a timing round
    after each epoch; their figures go into ``out``."""
    formats = spec["store"]["value_formats"]
    labels = ["supervised", "online_kd", *[f"store_kd_{fmt}" for fmt in formats]]
    timer = _RoundTimer(spec, data, teacher_net, device)
    orders = balanced_orders(len(labels))
    rates: dict[str, list[float]] = {label: [] for label in labels}
    paired: dict[str, list[float]] = {key: [] for key in PAIRED}
    finals: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for seed in spec["seeds"]:
        configs = _run_configs(spec, seed, teacher_run, stores, spec["store"]["repeats"])
        runs = {label: api.Run(configs[label], overwrite=True, verbose=False)
                for label in labels}
        steps = {label: run.epochs() for label, run in runs.items()}
        _take_turns(spec, steps, labels, orders, timer, formats[0], rates, paired)
        for label in labels:
            for _ in steps[label]:  # nothing left but writing the final weights
                pass
            result = runs[label].finish()
            figures = _run_figures(result)
            if label == "supervised":  # no teacher in the run: measure fidelity after it
                figures.update(_fidelity(configs[label], result.run_dir, data, teacher_net,
                                         device))
            finals[label].append(figures)
            say(f"seed {seed} {label:16s} test accuracy {100 * figures['accuracy']:.1f}%, "
                f"agreement {100 * figures['agreement']:.1f}%")
    _summarise(out, labels, formats[0], rates, paired, finals)
    say(f"store / supervised = {out['store_vs_supervised']:.3f}, store / online = "
        f"{out['store_vs_online']:.2f}, online / ideal = {out['online_vs_ideal']:.3f} "
        f"(teacher forward = {out['teacher_cost_ratio']:.1f} student steps); accuracy store - "
        f"online = {out['store_vs_online_accuracy']:+.2f} points")


def _take_turns(spec: dict[str, Any], steps: dict[str, Any], labels: list[str],
                orders: list[list[int]], timer: _RoundTimer, main: str,
                rates: dict[str, list[float]], paired: dict[str, list[float]]) -> None:
    """One seed's epochs: every run trains one epoch in the epoch's order, then a timing
    round; the epoch rates and the paired ratios of the epochs after the first are kept."""
    for epoch in range(spec["epochs"]):
        # an epoch runs slower right after the online run's (the teacher's activations
        # evict the caches): the order changes every epoch so that every run follows
        # every other one (and the timing round) equally often
        order = orders[epoch % len(orders)]
        rate = {labels[i]: next(steps[labels[i]])["samples_per_s"] for i in order}
        t_rate, s_rate = timer.round()
        if epoch == 0 and spec["epochs"] > 1:
            continue  # warm-up epoch
        ideal = 1.0 / (1.0 / t_rate + 1.0 / s_rate)
        for label in labels:
            rates[label].append(rate[label])
        store = rate[f"store_kd_{main}"]
        for key, value in (
                ("store_vs_supervised", store / rate["supervised"]),
                ("store_vs_online", store / rate["online_kd"]),
                ("online_vs_ideal", rate["online_kd"] / ideal),
                ("teacher_cost_ratio", s_rate / t_rate),
                ("supervised_vs_student_step", rate["supervised"] / s_rate),
                ("teacher_forward", t_rate), ("student_step", s_rate),
                ("ideal_online", ideal)):
            paired[key].append(value)


def _summarise(out: dict[str, Any], labels: list[str], main: str,
               rates: dict[str, list[float]], paired: dict[str, list[float]],
               finals: dict[str, list[dict[str, Any]]]) -> None:
    """The runs' figures: median epoch rates, mean (and spread of) accuracies over the
    seeds, medians of the paired ratios."""
    for label in labels:
        out[f"{label}_samples_per_s"] = statistics.median(rates[label])
        for key in ("accuracy", "agreement", "kl", "train_time_s"):
            values = [f[key] for f in finals[label]]
            out[f"{label}_{key}"] = statistics.mean(values)
            if key == "accuracy":
                out[f"{label}_accuracy_std"] = statistics.pstdev(values)
    for key in ("samples_per_s", "accuracy", "accuracy_std", "agreement", "kl",
                "train_time_s"):
        out[f"store_kd_{key}"] = out[f"store_kd_{main}_{key}"]
    for key in ("store_vs_supervised", "store_vs_online", "online_vs_ideal",
                "teacher_cost_ratio", "supervised_vs_student_step"):
        out[key] = statistics.median(paired[key])
    for key in ("teacher_forward", "student_step", "ideal_online"):
        out[f"{key}_samples_per_s"] = statistics.median(paired[key])
    out["timed_epochs"] = len(paired["store_vs_supervised"])
    out["store_vs_online_accuracy"] = 100 * (out["store_kd_accuracy"]
                                             - out["online_kd_accuracy"])


class _RoundTimer:
    """Times ``timing.steps`` teacher forwards and student steps (batch ``batch_size`` of
    augmented inputs) once per call: the separately measured rates of the ideal online
    rate, taken between the epochs so that they share the training runs' machine load."""

    def __init__(self, spec: dict[str, Any], data: api.Data, teacher: nn.Module,
                 device: torch.device) -> None:
        k, shape = data.splits.num_classes, data.splits.input_shape
        x, y = training_inputs(data.train, int(spec["data"].get("batch_size", 128)))
        x, _ = make_augment(shape, **spec["augment"])(x, torch.Generator().manual_seed(
            spec["seed"]))
        self.x, self.y = x.to(device), y.to(device)
        self.teacher, self.device, self.steps = teacher, device, spec["timing"]["steps"]
        seed_everything(spec["seed"])
        options = {k: v for k, v in spec["student"].items() if k != "name"}
        self.student = api.build_model(spec["student"]["name"], options, k, shape).to(device)
        self.optimizer = build_optimizer(list(self.student.parameters()),
                                         OptimConfig(**spec["optim"]))

    def round(self) -> tuple[float, float]:
        """(teacher forward samples/s, student step samples/s) of one timed round."""
        t_rate = teacher_forward_rate(self.teacher, self.x, self.steps, 1, self.device)
        s_rate = student_step_rate(self.student, self.optimizer, self.x, self.y, self.steps, 1,
                                   self.device)
        return t_rate, s_rate


def _printer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            print(message, flush=True)
    return say


def _teacher_net(run_dir: Path) -> nn.Module:
    """The trained teacher network itself (no Teacher wrapper)."""
    net = load_run_model(run_dir)
    net.requires_grad_(False)
    return net.eval()


def _run_figures(result: api.RunResult) -> dict[str, Any]:
    test = result.summary["test"]
    return {"samples_per_s": steady_rate(result.run_dir), "accuracy": test["accuracy"],
            "agreement": test.get("agreement"), "kl": test.get("kl"),
            "train_time_s": result.summary["train_time_s"]}


def _fidelity(cfg: Any, run_dir: Path, data: api.Data, teacher: nn.Module,
              device: torch.device) -> dict[str, float]:
    """Test agreement and KL of a finished run's student with ``teacher``."""
    student = load_run_model(run_dir).to(device)
    metrics = evaluate(student, eval_loader(data.test, cfg.data.eval_batch_size),
                       num_classes=data.splits.num_classes, teacher=teacher, device=device)
    return {"agreement": metrics["agreement"], "kl": metrics["kl"]}


__all__ = ["BARE_BATCHES", "RUNS", "TARGETS", "balanced_orders", "generation_batches",
           "load_store_spec", "run_store_bench", "store_markdown"]
