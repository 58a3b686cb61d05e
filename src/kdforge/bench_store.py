"""``kdforge bench store``: what a soft-label store (FKD, Shen & Xing, ECCV 2022) buys.

One run, one device (the CPU by default), one student, one data set, one schedule:

1. The teacher is trained (or a finished identical run reused) and the store generated
   (:func:`kdforge.soft_labels.generate`) once per value format. Generation speed is compared
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
figures with their targets, PASS or MISS). Nothing here is asserted by tests.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from kdforge import api
from kdforge.bench import finished_run, write_results
from kdforge.config import OptimConfig, SoftLabelConfig, parse_config
from kdforge.core.errors import ConfigError
from kdforge.core.outputs import to_outputs
from kdforge.data.augment import make_augment
from kdforge.data.loaders import eval_loader, first_batch
from kdforge.engine.checkpoint import WEIGHTS
from kdforge.engine.logging import METRICS
from kdforge.engine.metrics import evaluate
from kdforge.engine.trainer import build_optimizer, resolve_device, seed_everything
from kdforge.soft_labels import generate, store_path
from kdforge.teachers.store import VALUE_FORMATS

#: figure -> (threshold, meaning of the target); every target is "value >= threshold".
TARGETS: dict[str, tuple[float, str]] = {
    "generation_vs_bare": (0.9, "store generation runs at >= 90% of the bare teacher forward"),
    "store_vs_supervised": (0.95, "training from the store costs <= 5% over training alone"),
    "store_vs_online": (3.0, "the store trains >= 3x faster than online KD (when the "
                             "teacher costs >= 5x a student step)"),
    "online_vs_ideal": (0.95, "online KD reaches >= 95% of the ideal rate (< 5% framework "
                              "overhead)"),
    "teacher_cost_ratio": (5.0, "premise of store_vs_online: a teacher forward costs >= 5x "
                                "a student step"),
    "store_vs_online_accuracy": (-0.5, "store KD's test accuracy is at most 0.5 points below "
                                       "online KD's (points, mean over seeds)"),
}
#: FKD's own figure (Shen & Xing 2022): k = 5 fp16 soft labels and crop parameters.
FKD_BYTES_PER_VIEW = 39
FKD_VIEWS_PER_IMAGE = 500
RUNS = ("supervised", "online_kd", "store_kd")
#: Batches of the generation's sizes over which the bare teacher is timed.
BARE_BATCHES = 10

_SPEC_KEYS = {"output_dir", "seed", "seeds", "device", "data", "teacher", "student", "epochs", "optim",
              "schedule", "view", "losses", "store", "timing"}
_TEACHER_KEYS = {"model", "epochs", "optim", "schedule"}
_STORE_KEYS = {"views_per_sample", "top_k", "value_format", "value_formats", "batch_size",
               "samples_per_shard", "repeats"}
_TIMING_KEYS = {"repeats", "steps"}


# -- the spec ----------------------------------------------------------------------------------

def load_store_spec(path: str | Path) -> dict[str, Any]:
    """Read and check ``benchmarks/store.yaml``; returns it with every default filled in."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"store benchmark spec {str(path)!r} does not exist "
                          "(see benchmarks/store.yaml)")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping")
    _check_keys(path, "", raw, _SPEC_KEYS)
    for key in ("data", "teacher", "student"):
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"{path}: needs a '{key}' mapping")
    teacher = raw["teacher"]
    _check_keys(path, "teacher.", teacher, _TEACHER_KEYS)
    if not isinstance(teacher.get("model"), dict) or "name" not in teacher["model"]:
        raise ConfigError(f"{path}: teacher.model must name a model, e.g. {{name: resnet20}}")
    store = dict(raw.get("store") or {})
    _check_keys(path, "store.", store, _STORE_KEYS)
    if "value_format" in store and "value_formats" in store:
        raise ConfigError(f"{path}: give store.value_format or store.value_formats, not both")
    formats = store.pop("value_formats", None) or [store.pop("value_format", "uint8")]
    store.pop("value_format", None)
    if isinstance(formats, str):
        formats = [formats]
    bad = [f for f in formats if f not in VALUE_FORMATS]
    if bad or len(set(formats)) != len(formats):
        raise ConfigError(f"{path}: store.value_formats must be distinct values of "
                          f"{list(VALUE_FORMATS)}; got {formats}")
    view = dict(raw.get("view") or {})
    name = view.pop("name", "consistent")
    if name != "consistent":
        raise ConfigError(f"{path}: view.name must be 'consistent' (the view a store replays "
                          f"and the supervised and online runs share); got {name!r}")
    timing = dict(raw.get("timing") or {})
    _check_keys(path, "timing.", timing, _TIMING_KEYS)
    losses = raw.get("losses") or [{"name": "kd", "T": 4}]
    if not isinstance(losses, list):
        raise ConfigError(f"{path}: losses must be a list of loss terms")
    epochs = int(raw.get("epochs", 15))
    seed = int(raw.get("seed", 0))
    seeds = raw.get("seeds", [seed])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers (the "
                          f"student runs' seeds); got {seeds!r}")
    optim = raw.get("optim") or {}
    schedule = raw.get("schedule") or {}
    return {
        "output_dir": Path(raw.get("output_dir", "runs/store_bench")),
        "seed": seed,
        "seeds": [int(x) for x in seeds],
        "device": str(raw.get("device", "cpu")),
        "data": dict(raw["data"]),
        "student": dict(raw["student"]),
        "epochs": epochs,
        "optim": optim,
        "schedule": schedule,
        "augment": view,
        "losses": losses,
        "teacher": {"model": dict(teacher["model"]),
                    "epochs": int(teacher.get("epochs", epochs)),
                    "optim": teacher.get("optim", optim),
                    "schedule": teacher.get("schedule", schedule)},
        "store": {"views_per_sample": int(store.get("views_per_sample", 50)),
                  "top_k": int(store.get("top_k", 5)),
                  "value_formats": list(formats),
                  "batch_size": int(store.get("batch_size", 1024)),
                  "samples_per_shard": int(store.get("samples_per_shard", 4096)),
                  "repeats": int(store.get("repeats", 1))},
        "timing": {"repeats": int(timing.get("repeats", 5)),
                   "steps": int(timing.get("steps", 100))},
    }


def _check_keys(path: Path, prefix: str, section: dict, allowed: set[str]) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {[prefix + k for k in unknown]}; allowed: "
                          f"{sorted(prefix + k for k in allowed)}")


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


# -- timing ------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(run: Callable[[], None], items: int, repeats: int, device: torch.device,
                warmup: Callable[[], None] | None = None) -> float:
    """Median over ``repeats`` of ``items / seconds`` of one call of ``run`` (perf_counter),
    after one call of ``warmup`` (default: ``run``)."""
    (warmup or run)()
    rates = []
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        rates.append(items / max(time.perf_counter() - start, 1e-9))
    return float(statistics.median(rates))


def generation_batches(num_samples: int, views: int, batch_size: int,
                       samples_per_shard: int) -> list[int]:
    """The teacher batch sizes ``generate`` uses: per shard, chunks of
    ``max(1, batch_size // views)`` samples times ``views`` views."""
    per_chunk = max(1, batch_size // views)
    sizes = []
    for lo in range(0, num_samples, samples_per_shard):
        hi = min(num_samples, lo + samples_per_shard)
        sizes += [(min(hi, first + per_chunk) - first) * views
                  for first in range(lo, hi, per_chunk)]
    return sizes


def _inputs(dataset: Any, n: int) -> tuple[Tensor, Tensor]:
    """``n`` training inputs and labels (the data set cycled when it is smaller)."""
    batch = first_batch(dataset, n)
    idx = torch.arange(n) % batch.inputs.shape[0]
    assert batch.targets is not None
    return batch.inputs[idx], batch.targets[idx]


def bare_teacher_rate(model: nn.Module, inputs: Tensor, sizes: list[int], repeats: int,
                      device: torch.device) -> float:
    """Views/s of ``model`` alone (eval, inference_mode) over batches of ``sizes``, on the
    pre-made ``inputs`` (no augmentation, no top-k, no encoding, no writing)."""
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            for b in sizes:
                model(inputs[:b])

    def warmup() -> None:
        with torch.inference_mode():
            model(inputs[:sizes[0]])

    return median_rate(run, sum(sizes), repeats, device, warmup)


def teacher_forward_rate(model: nn.Module, x: Tensor, steps: int, repeats: int,
                         device: torch.device) -> float:
    """Samples/s of ``steps`` teacher forwards (eval, no_grad) on the batch ``x``."""
    model.eval()

    def run(n: int = steps) -> None:
        with torch.no_grad():
            for _ in range(n):
                model(x)

    return median_rate(run, steps * x.shape[0], repeats, device, lambda: run(3))


def student_step_rate(student: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
                      y: Tensor, steps: int, repeats: int, device: torch.device) -> float:
    """Samples/s of ``steps`` training steps (forward, CE, backward, optimizer step)."""
    student.train()

    def run(n: int = steps) -> None:
        for _ in range(n):
            loss = F.cross_entropy(to_outputs(student(x)).logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return median_rate(run, steps * x.shape[0], repeats, device, lambda: run(3))


def epoch_rates(run_dir: Path) -> list[float]:
    """``samples_per_s`` of every epoch record of a run's ``metrics.jsonl``, in epoch order."""
    records = [json.loads(line) for line in (Path(run_dir) / METRICS).read_text().splitlines()
               if line.strip()]
    records = sorted((r for r in records if "samples_per_s" in r), key=lambda r: r["epoch"])
    return [float(r["samples_per_s"]) for r in records]


def steady_rate(run_dir: Path) -> float:
    """Mean samples/s over the epochs after the first (warm-up); the only epoch if just one."""
    rates = epoch_rates(run_dir)
    if not rates:
        raise ConfigError(f"{run_dir}/{METRICS} holds no epoch records")
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


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
    s, timing = spec["store"], spec["timing"]
    formats = s["value_formats"]
    main = formats[0]
    out: dict[str, Any] = {
        "spec": str(spec_path), "device": str(device), "torch_threads": torch.get_num_threads(),
        "data": spec["data"]["name"], "student": spec["student"]["name"],
        "teacher": spec["teacher"]["model"]["name"], "epochs": spec["epochs"],
        "batch_size": int(spec["data"].get("batch_size", 128)), "seed": spec["seed"],
        "seeds": ",".join(str(x) for x in spec["seeds"]),
        "losses": ",".join(str(loss.get("name")) for loss in spec["losses"]),
        "views_per_sample": s["views_per_sample"], "top_k": s["top_k"], "value_format": main,
        "value_formats": ",".join(formats), "repeats": s["repeats"],
        "timing_repeats": timing["repeats"], "timing_steps": timing["steps"],
    }

    # 1. the teacher
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
    k, shape = data.splits.num_classes, data.splits.input_shape
    n_train = len(data.train)
    teacher_net = _teacher_net(teacher.run_dir, k, shape).to(device)

    # 2. the stores; the bare teacher is timed right before and after the main one is made
    sizes = generation_batches(n_train, s["views_per_sample"], s["batch_size"],
                               s["samples_per_shard"])
    gen_inputs = _inputs(data.train, max(sizes))[0].to(device)

    bare_sizes = sizes[:BARE_BATCHES]  # the generation's first batches: the same rate

    def bare_rate() -> float:
        return bare_teacher_rate(teacher_net, gen_inputs, bare_sizes, timing["repeats"], device)

    stores: dict[str, dict[str, Any]] = {}
    bare: list[float] = []
    for fmt in formats:
        sl_cfg = _store_config(spec, fmt, teacher.run_dir)
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

    # 3. the training runs, epoch by epoch in turn, with a timing round after each epoch
    labels = ["supervised", "online_kd", *[f"store_kd_{fmt}" for fmt in formats]]
    timer = _RoundTimer(spec, data, teacher_net, device)
    orders = balanced_orders(len(labels))
    epoch_rates: dict[str, list[float]] = {label: [] for label in labels}
    paired: dict[str, list[float]] = {key: [] for key in (
        "store_vs_supervised", "store_vs_online", "online_vs_ideal", "teacher_cost_ratio",
        "supervised_vs_student_step", "teacher_forward", "student_step", "ideal_online")}
    finals: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for seed in spec["seeds"]:
        configs = _run_configs(spec, seed, teacher.run_dir, stores, s["repeats"])
        runs = {label: api.Run(configs[label], overwrite=True, verbose=False)
                for label in labels}
        steps = {label: run.epochs() for label, run in runs.items()}
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
                epoch_rates[label].append(rate[label])
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
    for label in labels:
        out[f"{label}_samples_per_s"] = statistics.median(epoch_rates[label])
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
    say(f"store / supervised = {out['store_vs_supervised']:.3f}, store / online = "
        f"{out['store_vs_online']:.2f}, online / ideal = {out['online_vs_ideal']:.3f} "
        f"(teacher forward = {out['teacher_cost_ratio']:.1f} student steps); accuracy store - "
        f"online = {out['store_vs_online_accuracy']:+.2f} points")

    # 4. size
    out.update({
        "bytes_per_view": stores[main]["bytes_per_view"],
        "bytes_per_sample": stores[main]["bytes_per_view"] * s["views_per_sample"],
        "store_bytes": stores[main]["bytes_per_view"] * n_train * s["views_per_sample"],
        "fkd_bytes_per_view": FKD_BYTES_PER_VIEW,
    })
    out["total_time_s"] = time.perf_counter() - start
    if results is not None:
        write_results(results, "store", out, store_markdown(out))
    return out


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


class _RoundTimer:
    """Times ``timing.steps`` teacher forwards and student steps (batch ``batch_size`` of
    augmented inputs) once per call: the separately measured rates of the ideal online
    rate, taken between the epochs so that they share the training runs' machine load."""

    def __init__(self, spec: dict[str, Any], data: api.Data, teacher: nn.Module,
                 device: torch.device) -> None:
        k, shape = data.splits.num_classes, data.splits.input_shape
        x, y = _inputs(data.train, int(spec["data"].get("batch_size", 128)))
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

def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` runs in which every run directly follows every other run equally
    often, and each run comes first equally often: a Williams design (Williams, "Experimental
    designs balanced for the estimation of residual effects of treatments", 1949). ``n``
    orders for even ``n``; for odd ``n`` those and their reverses (``2n``).
    """
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        if len(first) % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % n for i in first] for shift in range(n)]
    return orders + [order[::-1] for order in orders] if n % 2 else orders


def _printer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            print(message, flush=True)
    return say


def _teacher_net(run_dir: Path, num_classes: int, shape: tuple[int, ...]) -> nn.Module:
    """The trained teacher network itself (no Teacher wrapper)."""
    meta = json.loads((Path(run_dir) / api.MODEL_FILE).read_text())
    net = api.build_model(meta["name"], meta["options"], num_classes, shape,
                          str(Path(run_dir) / WEIGHTS))
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
    k, shape = data.splits.num_classes, data.splits.input_shape
    student = api.build_model(cfg.student.name, cfg.student.options, k, shape,
                              str(Path(run_dir) / WEIGHTS)).to(device)
    metrics = evaluate(student, eval_loader(data.test, cfg.data.eval_batch_size),
                       num_classes=k, teacher=teacher, device=device)
    return {"agreement": metrics["agreement"], "kl": metrics["kl"]}


# -- the report --------------------------------------------------------------------------------

def verdict(value: float | None, figure: str) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    return "PASS" if value >= TARGETS[figure][0] else "MISS"


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def store_markdown(out: dict[str, Any]) -> str:
    fmts = out["value_formats"].split(",")
    premise = out["teacher_cost_ratio"] >= TARGETS["teacher_cost_ratio"][0]
    lines = [
        "# Soft-label store (FKD) vs online distillation\n",
        f"{out['data']}: {out['teacher']} teacher (test {100 * out['teacher_accuracy']:.1f}%, "
        f"{out['teacher_params']:,} params) -> {out['student']} student; {out['epochs']} "
        f"epochs, batch {out['batch_size']}, seeds {out['seeds']}, losses {out['losses']}, "
        f"consistent view; device {out['device']} with {out['torch_threads']} threads. "
        f"Store: {out['views_per_sample']} views per sample, top-{out['top_k']}, "
        f"{out['value_format']} (main format), {out['repeats']} view(s) per loaded sample. "
        f"Total time {out['total_time_s'] / 60:.1f} min.\n",
        "The runs of a seed take turns epoch by epoch, and after each epoch the teacher "
        f"forward and the student step are timed ({out['timing_steps']} steps each), so every "
        "rate of one epoch was measured under the same machine load. Rates are medians over "
        f"the {out['timed_epochs']} epochs after each run's first, over all seeds; ratios "
        "are medians of the per-epoch ratios. Accuracies are means over the seeds.\n",
        "\n## Targets\n",
        "| figure | value | target | result |",
        "|---|---|---|---|",
    ]
    for figure, (threshold, meaning) in TARGETS.items():
        result = verdict(out.get(figure), figure)
        if figure == "store_vs_online" and not premise:
            result += " (premise not met: see teacher_cost_ratio)"
        lines.append(f"| {figure}: {meaning} | {_num(out.get(figure))} | >= {threshold:g} | "
                     f"{result} |")
    lines += [
        "\n## Training runs\n",
        "Throughput: samples/s of an epoch (metrics.jsonl: data loading, view, forward, "
        "backward, optimizer step; validation excluded). Agreement and KL(teacher || "
        "student) on the test set, against the real teacher (for the supervised run "
        "measured after training)."
        + (f" store_kd loads each sample once for {out['repeats']} views: its samples are "
           "views." if out["repeats"] > 1 else "") + "\n",
        "| run | samples/s | test acc % | agreement % | KL | train time s |",
        "|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        label = run if run != "store_kd" else f"store_kd ({out['value_format']})"
        lines.append(
            f"| {label} | {_num(out[f'{run}_samples_per_s'], 0)} | "
            f"{_num(100 * out[f'{run}_accuracy'], 1)} ± "
            f"{_num(100 * out[f'{run}_accuracy_std'], 1)} | "
            f"{_num(_pct(out.get(f'{run}_agreement')), 1)} | {_num(out.get(f'{run}_kl'), 3)} | "
            f"{_num(out[f'{run}_train_time_s'], 1)} |")
    lines += [
        f"\nstore_vs_supervised = {_num(out['store_vs_supervised'], 3)}, store_vs_online = "
        f"{_num(out['store_vs_online'])}, store_vs_online_accuracy = "
        f"{_num(out['store_vs_online_accuracy'])} points.\n",
        "\n## Rates\n",
        "| rate | value | what it measures |",
        "|---|---|---|",
        f"| generation | {_num(out['generation_views_per_s'], 0)} views/s | "
        "`kdforge soft-labels` end to end: data, augmentation, teacher, top-k, encoding, "
        "shard writes |",
        f"| bare teacher | {_num(out['bare_teacher_views_per_s'], 0)} views/s | the teacher "
        f"network alone (eval, inference_mode) over {out['bare_views']:,} views in the "
        f"generation's first batches (up to {out['generation_batch_size']}), pre-made "
        "inputs; mean of "
        f"the medians of {out['timing_repeats']} passes timed right before and right after "
        "the generation |",
        f"| teacher forward | {_num(out['teacher_forward_samples_per_s'], 0)} samples/s | "
        f"eval, no_grad, batch {out['batch_size']} of augmented inputs |",
        f"| student step | {_num(out['student_step_samples_per_s'], 0)} samples/s | forward, "
        f"CE, backward, optimizer step, batch {out['batch_size']} |",
        f"| ideal online | {_num(out['ideal_online_samples_per_s'], 0)} samples/s | "
        "1 / (1 / teacher forward + 1 / student step) |",
        f"\nteacher_cost_ratio = student step rate / teacher forward rate = "
        f"{_num(out['teacher_cost_ratio'])} (a teacher forward costs that many student "
        f"steps); supervised run / student step = {_num(out['supervised_vs_student_step'])} "
        "(the training loop's own overhead without a teacher).\n",
        "\n## Size\n",
        f"{out['bytes_per_view']} bytes per view ({out['value_format']}, top-{out['top_k']}, "
        f"crop and flip), {out['bytes_per_sample']:,} bytes per sample at "
        f"{out['views_per_sample']} views, {out['store_bytes'] / 1e6:.2f} MB for the whole "
        f"store; at 500 views that is {out['bytes_per_view'] * 500 / 1000:.1f} KB per image. "
        f"FKD (Shen & Xing 2022) reports {FKD_BYTES_PER_VIEW} bytes per crop at k = 5 in "
        f"fp16, {FKD_BYTES_PER_VIEW * FKD_VIEWS_PER_IMAGE / 1000:.1f} KB per image of "
        f"{FKD_VIEWS_PER_IMAGE} crops.\n",
        "\n## Value format (accuracy cost of quantisation)\n",
        "| value format | bytes/view | generation views/s | samples/s | test acc % | "
        "agreement % | KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt in fmts:
        p = f"store_kd_{fmt}_"
        lines.append(
            f"| {fmt} | {out[f'bytes_per_view_{fmt}']} | "
            f"{_num(out.get(f'generation_{fmt}_views_per_s'), 0)} | "
            f"{_num(out[p + 'samples_per_s'], 0)} | {_num(100 * out[p + 'accuracy'], 1)} ± "
            f"{_num(100 * out[p + 'accuracy_std'], 1)} | "
            f"{_num(_pct(out.get(p + 'agreement')), 1)} | {_num(out.get(p + 'kl'), 3)} |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


__all__ = ["TARGETS", "load_store_spec", "run_store_bench", "store_markdown"]
