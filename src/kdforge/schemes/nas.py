"""``nas``: search a student architecture under a parameter and a CPU latency budget,
scoring each candidate by a short distillation run, then train the chosen one fully.

Liu, Jia, Xu, et al., "Search to Distill: Pearls are Everywhere but not the Eyes" (AKD),
CVPR 2020: the best student for a teacher is found by searching architectures under a
latency constraint, each scored by how well it learns *from that teacher* (its accuracy
after distillation), not by its accuracy trained alone. The constraint is a measured
latency, as in Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
CVPR 2019, rather than a proxy such as FLOPs.

What kdforge does differs from AKD in the search itself: AKD trains an RL controller that
samples from a large space; kdforge searches a small grid of a zoo model's depth and width
(:mod:`~kdforge.schemes.search_space`) exhaustively, or a seeded sample of it
(``max_candidates``). In ``output_dir/name/``:

1. Every candidate is built and costed: its parameters and its latency on CPU (batch
   ``latency_batch``, ``latency_threads`` threads), even when training runs on a GPU: the
   candidates are timed interleaved in ``latency_rounds`` rounds, each the median of
   ``latency_repeats`` passes, and the fastest round is kept (contention only adds time). A candidate over ``budget_params`` or ``budget_latency_ms`` is rejected
   and never trained. The costs are kept in ``search.json`` and read back when the command
   runs again, so a resumed search sees the latencies it chose with.
2. ``search/cand-NN``: each feasible candidate distilled for ``search_epochs`` with the
   run's teacher, losses and optimizer; its score is its accuracy on the *validation* split
   (the last epoch's). The test split never enters the choice.
3. ``chosen``: the best-scoring candidate (ties: fewer parameters) trained with the run's
   full epochs.
4. ``reference``: of the ``reference`` zoo students, the one nearest to the chosen in
   parameters, trained with plain KD (the run's losses and teacher) at the same epochs.

Records: ``chosen`` (with the budgets, its costs, every candidate's options, costs, score
and status, the reference's accuracy; ``train_seconds`` is the search's and the chosen's
training together) and ``reference`` (``compare: False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt

from kdforge.config import RunConfig
from kdforge.core.errors import ConfigError
from kdforge.core.files import read_json, write_json
from kdforge.engine import distributed
from kdforge.losses.base import build_loss
from kdforge.models import MODELS, count_parameters
from kdforge.schemes import search_space
from kdforge.schemes.base import (
    Runner,
    Scheme,
    SchemeOptions,
    StageResult,
    derive,
    record_of,
    register,
    require,
)
from kdforge.schemes.mutual import PeerSpec

SEARCH_FILE = "search.json"
FEASIBLE, TRAINED, CHOSEN = "feasible", "trained", "chosen"
OVER_PARAMS, OVER_LATENCY = "over params budget", "over latency budget"


class NasOptions(SchemeOptions):
    model: str | None = Field(None, description="zoo model searched (default: student.name)")
    key: str | None = Field(None, description="its list-valued depth/width option (default: "
                            "channels for cnn1d/cnn2d, hidden for mlp)")
    depths: list[PositiveInt] = Field(description="numbers of blocks tried, e.g. [1, 2, 3]")
    widths: list[PositiveInt] = Field(description="block widths tried, e.g. [8, 16, 32]")
    grow: bool = Field(False, description="widths double per block ([w, 2w, 4w...], capped "
                       "at the largest width) instead of staying equal")
    max_candidates: PositiveInt | None = Field(None, description="cost only a sample of this "
                                               "many grid points (seeded by the run's seed)")
    budget_params: int = Field(description="most scalar parameters the student may have")
    budget_latency_ms: float = Field(description="most median CPU milliseconds per forward "
                                     "pass (batch latency_batch)")
    latency_batch: PositiveInt = Field(1, description="batch size latency is measured at")
    latency_threads: PositiveInt = Field(1, description="CPU threads latency is measured with")
    latency_repeats: PositiveInt = Field(30, description="timed forward passes (median)")
    latency_rounds: PositiveInt = Field(5, description="interleaved rounds over the "
                                        "candidates; the fastest is kept")
    search_epochs: PositiveInt = Field(5, description="epochs of each candidate's short KD run")
    reference: list[PeerSpec] | None = Field(None, description="zoo students the chosen is "
                                             "compared with, e.g. [{name: mlp, hidden: [32]}]"
                                             " (default: by input rank, see search_space)")


@register("nas", paper="Liu et al. 2020, Search to Distill: Pearls are Everywhere but not "
                       "the Eyes (AKD, CVPR); Tan et al. 2019, MnasNet (CVPR)")
class DistillationSearch(Scheme):
    """A grid of students costed, the feasible ones scored by short KD, the best trained."""

    Options = NasOptions
    sequence = True

    # -- checks -------------------------------------------------------------------------------
    def model_and_key(self, cfg: RunConfig) -> tuple[str, str]:
        model = self.options.model or cfg.student.name
        MODELS.get(model)  # an unknown model fails here, naming the known ones
        return model, search_space.search_key(model, self.options.key)

    def check(self, cfg: RunConfig) -> None:
        o = self.options
        require(bool(cfg.teachers), "nas scores candidates by distillation: give a 'teacher' "
                                    "section, e.g. teacher: {run: runs/mnist1d-teacher}")
        terms = [build_loss(loss.name, **loss.options) for loss in cfg.losses]
        require(any(t.needs_teacher for t in terms),
                f"none of the losses {[c.name for c in cfg.losses]} uses the teacher; nas "
                "scores candidates by distillation: add e.g. {name: kd, weight: 0.9, T: 4}")
        require(bool(o.depths) and bool(o.widths),
                "nas needs a non-empty grid: give scheme.depths and scheme.widths at least "
                "one value each, e.g. depths: [1, 2, 3], widths: [8, 16, 32]")
        require(cfg.data.val_fraction > 0,
                "nas scores candidates on the validation split, never the test split: set "
                "data.val_fraction > 0, e.g. 0.1")
        require(o.budget_params > 0, f"scheme.budget_params must be a positive number of "
                                     f"parameters, e.g. 20000; got {o.budget_params}")
        require(o.budget_latency_ms > 0, f"scheme.budget_latency_ms must be positive "
                                         f"milliseconds, e.g. 1.0; got {o.budget_latency_ms}")
        self.model_and_key(cfg)

    # -- the search ---------------------------------------------------------------------------
    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        self.check(cfg)
        o = self.options
        model, key = self.model_and_key(cfg)
        data = runner.data(cfg)  # only its classes and input shape are used here
        base = cfg.student.options if model == cfg.student.name else {}
        grid = search_space.candidate_grid(base, key, o.depths, o.widths, grow=o.grow)
        picked = search_space.sample_indices(len(grid), o.max_candidates, cfg.seed)
        table = self._costed(runner.root, model, [(i, grid[i]) for i in picked],
                             data.num_classes, data.input_shape)
        feasible = [row for row in table if row["status"] == FEASIBLE]
        if not feasible:
            small = min(table, key=lambda r: (r["params"], r["latency_ms"]))
            raise ConfigError(
                f"nas: no candidate fits the budgets (budget_params {o.budget_params}, "
                f"budget_latency_ms {o.budget_latency_ms}); the smallest, {small['options']}, "
                f"has {small['params']} parameters and {small['latency_ms']:.3f} ms: raise "
                "the budgets or add smaller depths/widths")
        self._write(runner.root, model, key, table)

        search_seconds = 0.0
        for row in feasible:
            result = runner.stage(derive(cfg, row["stage"], student={"name": model,
                                                                      **row["options"]},
                                         train={**cfg.train.model_dump(mode="json"),
                                                "epochs": o.search_epochs}))
            row["score"] = 100.0 * _val_accuracy(result, row["stage"])
            row["status"] = TRAINED
            search_seconds += result.summary["train_time_s"]
        best = max(feasible, key=lambda r: (r["score"], -r["params"]))
        best["status"] = CHOSEN
        chosen = runner.stage(derive(cfg, "chosen", student={"name": model, **best["options"]}))

        ref_spec, ref_params = self._reference(best["params"], data.num_classes,
                                               data.input_shape)
        reference = runner.stage(derive(cfg, "reference", student=ref_spec))
        ref_name = ref_spec.pop("name")
        ref_record = record_of(reference, ref_name, ref_spec, variant="reference",
                               compare=False, params=ref_params)
        self._write(runner.root, model, key, table, chosen=best["stage"],
                    reference={"student": ref_name, "options": ref_spec, "params": ref_params})
        record = record_of(
            chosen, model, best["options"], variant="chosen",
            budget_params=o.budget_params, chosen_params=best["params"],
            budget_latency_ms=o.budget_latency_ms, chosen_latency_ms=best["latency_ms"],
            chosen_score=best["score"], candidates=[_public(r) for r in table],
            reference_student=ref_name, reference_options=ref_spec,
            reference_params=ref_params, reference_accuracy=ref_record["test_accuracy"])
        record["train_seconds"] = search_seconds + chosen.summary["train_time_s"]
        return [record, ref_record]

    def _costed(self, root: Path, model: str, candidates: list[tuple[int, dict[str, Any]]],
                num_classes: int, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
        """One row per candidate with its costs and, if over a budget, its status (the
        costs of a previous run of the same search are read back from ``search.json``)."""
        o = self.options
        options = [opts for _, opts in candidates]
        costs = _stored_costs(root / SEARCH_FILE, model, options, self._measurement())
        if costs is None:
            costs = search_space.measure_costs(
                model, options, num_classes, input_shape, batch=o.latency_batch,
                threads=o.latency_threads, repeats=o.latency_repeats,
                rounds=o.latency_rounds)
        rows = []
        for (i, opts), cost in zip(candidates, costs, strict=True):
            status = (OVER_PARAMS if cost.params > o.budget_params else
                      OVER_LATENCY if cost.latency_ms > o.budget_latency_ms else FEASIBLE)
            rows.append({"stage": f"search/cand-{i:02d}", "options": opts,
                         "params": cost.params, "latency_ms": cost.latency_ms,
                         "score": None, "status": status})
        return rows

    def _measurement(self) -> dict[str, Any]:
        o = self.options
        return {"device": "cpu", "batch": o.latency_batch, "threads": o.latency_threads,
                "repeats": o.latency_repeats, "rounds": o.latency_rounds}

    def _reference(self, params: int, num_classes: int,
                   input_shape: tuple[int, ...]) -> tuple[dict[str, Any], int]:
        """The reference zoo student nearest to ``params`` parameters (ties: the first
        listed) and its parameters."""
        specs = ([{"name": s.name, **(s.model_extra or {})} for s in self.options.reference]
                 if self.options.reference else
                 search_space.DEFAULT_REFERENCES.get(len(input_shape)))
        require(bool(specs), f"nas has no default reference students for inputs of shape "
                             f"{tuple(input_shape)}; give scheme.reference, e.g. "
                             "[{name: mlp, hidden: [32]}]")
        assert specs is not None
        sized = []
        for spec in specs:
            options = {k: v for k, v in spec.items() if k != "name"}
            net = search_space.build(spec["name"], options, num_classes, input_shape)
            sized.append((dict(spec), count_parameters(net)))
        return min(sized, key=lambda s: abs(s[1] - params))

    def _write(self, root: Path, model: str, key: str, table: list[dict[str, Any]],
               **extra: Any) -> None:
        if not distributed.env_from_torchrun().is_main:
            return
        o = self.options
        write_json(root / SEARCH_FILE, {
            "model": model, "key": key, "budget_params": o.budget_params,
            "budget_latency_ms": o.budget_latency_ms, "measurement": self._measurement(),
            "candidates": table, **extra})


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A candidate as the record lists it."""
    return {k: row[k] for k in ("options", "params", "latency_ms", "score", "status")}


def _val_accuracy(result: StageResult, stage: str) -> float:
    """The last validation accuracy of a finished stage (what a candidate is scored by)."""
    val = result.summary.get("val", {})
    if "accuracy" not in val:
        raise ConfigError(f"stage {stage!r} has no validation accuracy; nas scores candidates "
                          "on the validation split: set data.val_fraction > 0")
    return float(val["accuracy"])


def _stored_costs(path: Path, model: str, options: list[dict[str, Any]],
                  measurement: dict[str, Any]) -> list[search_space.Cost] | None:
    """The costs a previous run of this search measured, if ``path`` holds the same
    candidates measured the same way; else ``None``."""
    if not path.is_file():
        return None
    stored = read_json(path, "search record", "delete it to measure the candidates again")
    rows = stored.get("candidates", [])
    if (stored.get("model") != model or stored.get("measurement") != measurement
            or [r.get("options") for r in rows] != options):
        return None
    return [search_space.Cost(int(r["params"]), float(r["latency_ms"])) for r in rows]


__all__ = ["SEARCH_FILE", "DistillationSearch", "NasOptions"]
