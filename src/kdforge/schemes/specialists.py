"""``specialists``: a generalist, specialists for the classes it confuses, one student.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, section 5.
The config's ``teacher: {run: DIR}`` is the generalist (trained on every class). The
scheme runs, in ``output_dir/name/``:

1. ``clusters.json``: the specialists' class subsets ``S^m``, K-means on the columns of
   the covariance matrix of the generalist's predicted probabilities on the validation
   split (``cluster_split``; never the test split), at least two classes each (sec. 5.2),
   or the subsets given as ``scheme.clusters``.
2. ``specialist-m``: a run per subset trained with CE on ``data.classes: S^m, rest: merge``:
   the other classes form one dustbin class, ``rest_ratio`` dustbin samples per special
   sample (1: half and half, sec. 5.1). A specialist has the generalist's architecture
   and starts from its weights (``init/specialist-m/``): the head's rows are the
   generalist's rows of ``S^m`` in order, the dustbin row their mean over the other
   classes with ``log(K - |S^m|)`` added to its bias (``mean + log count`` bounds the
   log-sum-exp of the merged logits from below).
3. The combination (sec. 5.3; :class:`~kdforge.schemes.specialist_teacher.SpecialistEnsemble`):
   for each sample the ``top_n`` most probable generalist classes ``k`` select the active
   specialists ``A_k`` (those whose subset meets ``k``), and the teacher's distribution is

       q* = argmin_q  KL(p^g || q) + sum_{m in A_k} KL(p^m || A_m q)

   with ``A_m q`` the mass of ``q`` on ``S^m`` plus its dustbin, found by ``steps``
   gradient steps on the logits of ``q``; the dustbin logit is first raised by the log of
   the factor its class was undersampled by (``dustbin_correction``, sec. 5.1).
4. ``student``: the config's ``student`` distilled from ``q*`` with the config's
   ``losses``. That stage's scheme section names the finished runs (``specialist_runs``
   and ``clusters``), which makes this scheme build the distiller of one run.

Records: ``generalist`` (test accuracy), ``specialist-m`` (accuracy on its test subset
with the dustbin, ``classes``), ``combined`` (agreement with the generalist) and
``student`` (agreement with the combined teacher).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdforge.config import RunConfig, TeacherConfig
from kdforge.core.files import read_tensors, write_json
from kdforge.core.step import TrainStep
from kdforge.core.teacher import Teacher
from kdforge.data.loaders import eval_loader, to_batch
from kdforge.engine import distributed
from kdforge.engine.checkpoint import save_weights
from kdforge.engine.metrics import evaluate
from kdforge.engine.runtime import resolve_device
from kdforge.models.factory import create_model
from kdforge.models.runs import WEIGHTS, load_run_model, read_model_description, save_run_model
from kdforge.schemes.assistants import teacher_run
from kdforge.schemes.base import (
    RunData,
    Runner,
    Scheme,
    SchemeOptions,
    StageResult,
    StepInputs,
    derive,
    evaluate_runs,
    record_of,
    register,
    require,
)
from kdforge.schemes.mutual import PeerSpec
from kdforge.schemes.specialist_teacher import (
    SpecialistEnsemble,
    check_clusters,
    cluster_classes,
    dustbin_shifts,
)
from kdforge.teachers.module import ModuleTeacher

CLUSTERS_FILE = "clusters.json"


class SpecialistOptions(SchemeOptions):
    num_specialists: int = Field(2, ge=1, description="specialists (class subsets)")
    top_n: int = Field(1, ge=1, description="generalist classes that pick the active "
                       "specialists of a sample (paper: 1)")
    rest_ratio: float | None = Field(1.0, gt=0.0, description="dustbin samples per special "
                                     "sample in a specialist's training set (1: half/half)")
    specialist: PeerSpec | None = Field(None, description="the specialists' model (default: "
                                        "the generalist's architecture)")
    specialist_init: bool = Field(True, description="start each specialist from the "
                                  "generalist's weights (sec. 5.1)")
    specialist_epochs: int | None = Field(None, gt=0, description="epochs of a specialist "
                                          "(default: train.epochs)")
    specialist_lr: float | None = Field(None, gt=0.0, description="a specialist's learning "
                                        "rate (default: optim.lr)")
    cluster_split: Literal["val", "train"] = Field("val", description="the split whose "
                                                   "generalist predictions are clustered")
    cluster_seed: int = Field(0, description="seed of the K-means")
    steps: int = Field(100, ge=0, description="gradient steps on the logits of q")
    lr: float = Field(0.3, gt=0.0, description="their (Adam) step size")
    dustbin_correction: bool = Field(True, description="raise the dustbin logit by the log "
                                     "of its undersampling factor (sec. 5.1)")
    clusters: list[list[int]] | None = Field(None, description="the class subsets, instead "
                                             "of clustering")
    specialist_runs: list[str] | None = Field(None, description="with clusters: trained "
                                              "specialists; the scheme is then one "
                                              "distillation run (the last stage)")


@register("specialists", paper="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a "
                               "Neural Network, sec. 5 (specialists)")
class Specialists(Scheme):
    """A generalist plus specialists, combined per sample and distilled into the student."""

    Options = SpecialistOptions
    sequence = True

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        #: With the trained specialists named this is the one run of the last stage.
        self.sequence = o.specialist_runs is None
        if o.clusters is not None:
            require(len(o.clusters) == o.num_specialists,
                    f"scheme.clusters lists {len(o.clusters)} class subsets but "
                    f"num_specialists is {o.num_specialists}; make them agree")
        if o.specialist_runs is not None:
            require(o.clusters is not None and len(o.specialist_runs) == len(o.clusters),
                    "scheme.specialist_runs needs scheme.clusters, one class subset per "
                    "specialist run, in the same order")

    # -- the last stage: one distillation run ---------------------------------------------------
    def build_step(self, inputs: StepInputs) -> TrainStep:
        from kdforge.distill.distiller import Distiller

        teacher_run(inputs.cfg, "specialists")
        assert inputs.teacher is not None and self.options.specialist_runs is not None
        assert self.options.clusters is not None
        teacher = self.combination(inputs.teacher, inputs.data, self.options.clusters,
                                   self.options.specialist_runs, _precision(inputs.cfg))
        return Distiller(inputs.student, teacher, inputs.terms, eval_teacher=teacher)

    def report(self, cfg: RunConfig, step: TrainStep, trainer: Any,
               data: RunData) -> dict[str, Any]:
        return {"clusters": self.options.clusters,
                "specialist_runs": self.options.specialist_runs}

    def combination(self, generalist: Teacher, data: RunData, clusters: list[list[int]],
                    runs: list[str], precision: str = "fp32") -> SpecialistEnsemble:
        """The generalist and the trained specialists of ``runs`` as one teacher."""
        o = self.options
        shifts = None
        if o.dustbin_correction:
            shifts = dustbin_shifts(data.splits.train.targets, clusters, o.rest_ratio)
        return SpecialistEnsemble(
            generalist, [ModuleTeacher(load_run_model(r), precision=precision) for r in runs],
            clusters, num_classes=data.num_classes, top_n=o.top_n, steps=o.steps, lr=o.lr,
            dustbin_shifts=shifts)

    # -- the sequence ---------------------------------------------------------------------------
    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        o = self.options
        generalist = teacher_run(cfg, "specialists")
        data = runner.data(cfg)
        meta = read_model_description(generalist)
        specialist = self._check(cfg, data, meta)
        clusters = self._clusters(cfg, runner, data, generalist)
        results: list[StageResult] = []
        for m, subset in enumerate(clusters):
            results.append(runner.stage(self._specialist_stage(cfg, runner, m, subset,
                                                               specialist, generalist, meta)))
        runs = [str(r.run_dir) for r in results]
        where = resolve_device(cfg.train.device)
        reference = ModuleTeacher(load_run_model(generalist), precision=_precision(cfg))
        combined = self.combination(ModuleTeacher(load_run_model(generalist),
                                                  precision=_precision(cfg)),
                                    data, clusters, runs, _precision(cfg)).to(where)
        test = evaluate(combined, eval_loader(data.test, cfg.data.eval_batch_size),
                        num_classes=data.num_classes, teacher=reference.to(where), device=where)
        final = runner.stage(derive(cfg, "student", scheme={
            "name": self.name, "num_specialists": len(clusters), "clusters": clusters,
            "specialist_runs": runs, "top_n": o.top_n, "steps": o.steps, "lr": o.lr,
            "rest_ratio": o.rest_ratio, "dustbin_correction": o.dustbin_correction}))
        gen_test = evaluate_runs([Path(generalist)], data.test, num_classes=data.num_classes,
                                 device=cfg.train.device)
        spec_name = specialist["name"]
        spec_options = {k: v for k, v in specialist.items() if k not in ("name", "init")}
        records = [record_of(final, cfg.student.name, cfg.student.options, variant="student",
                             classes=None),
                   {"variant": "combined", "student": f"{meta['name']}+specialists",
                    "student_options": {}, "test_accuracy": 100.0 * test["accuracy"],
                    "agreement": 100.0 * test["agreement"],
                    "train_seconds": sum(r.summary["train_time_s"] for r in results),
                    "run_dir": str(runner.root), "classes": None, "compare": False},
                   {"variant": "generalist", "student": meta["name"],
                    "student_options": meta.get("options", {}),
                    "test_accuracy": 100.0 * gen_test["accuracy"], "agreement": None,
                    "train_seconds": _train_seconds(generalist), "run_dir": generalist,
                    "classes": None, "compare": False}]
        records += [record_of(r, spec_name, spec_options, variant=f"specialist-{m + 1}",
                              classes=clusters[m], compare=False)
                    for m, r in enumerate(results)]
        return records

    def _check(self, cfg: RunConfig, data: RunData, meta: dict[str, Any]) -> dict[str, Any]:
        """Refuse a bad config before anything trains; return the specialists' model."""
        from kdforge.api import build_losses

        o, k = self.options, data.num_classes
        require(int(meta["num_classes"]) == k,
                f"the generalist predicts {meta['num_classes']} classes but the data set has "
                f"{k}; train the generalist on this data set")
        require(o.top_n <= k, f"scheme.top_n is {o.top_n} but the data set has only {k} "
                              f"classes; choose 1..{k} (paper: 1)")
        if o.clusters is None:
            require(2 * o.num_specialists <= k,
                    f"{o.num_specialists} specialists of at least two classes each need "
                    f"{2 * o.num_specialists} classes, the data set has {k}: set "
                    f"scheme.num_specialists to at most {k // 2}")
        else:
            check_clusters(o.clusters, k)
        require(o.cluster_split == "train" or data.val is not None or o.clusters is not None,
                "scheme.cluster_split is 'val' but the run has no validation split: set "
                "data.val_fraction > 0 or scheme.cluster_split: train")
        terms = build_losses(cfg.losses)
        require(any(t.needs_teacher for t in terms),
                "the student learns from the combined teacher: give 'losses' a distillation "
                "term, e.g. {name: kd, T: 4}")
        features = [f for t in terms for f in t.teacher_features()]
        require(not features, f"the combined teacher gives probabilities only, not the "
                f"features {features}; use response losses such as kd")
        own = {"name": meta["name"], **meta.get("options", {})}
        spec = own if o.specialist is None else {"name": o.specialist.name,
                                                 **(o.specialist.model_extra or {})}
        require(not o.specialist_init or spec == own,
                f"specialist_init starts each specialist from the generalist's weights, which "
                f"needs the generalist's architecture {own}, not {spec}; drop "
                "scheme.specialist or set scheme.specialist_init: false")
        return spec

    def _clusters(self, cfg: RunConfig, runner: Runner, data: RunData,
                  generalist: str) -> list[list[int]]:
        """The class subsets: given, read back from ``clusters.json``, or clustered."""
        o = self.options
        path = Path(runner.root) / CLUSTERS_FILE
        key = {"generalist": generalist, "split": o.cluster_split, "seed": o.cluster_seed,
               "num_specialists": o.num_specialists}
        if o.clusters is not None:
            clusters, how = [list(c) for c in o.clusters], "given"
        elif path.is_file() and json.loads(path.read_text()).get("key") == key:
            return json.loads(path.read_text())["clusters"]
        else:
            dataset = data.val if o.cluster_split == "val" else data.train
            assert dataset is not None
            probs = generalist_probs(generalist, dataset, cfg.train.device,
                                     cfg.data.eval_batch_size)
            clusters, how = cluster_classes(probs, o.num_specialists, seed=o.cluster_seed), \
                "kmeans on the columns of the covariance of the generalist's probabilities"
        if distributed.env_from_torchrun().is_main:
            write_json(path, {"clusters": clusters, "how": how, "key": key})
        distributed.barrier()
        return clusters

    def _specialist_stage(self, cfg: RunConfig, runner: Runner, m: int, subset: list[int],
                          specialist: dict[str, Any], generalist: str,
                          meta: dict[str, Any]) -> RunConfig:
        o = self.options
        data = {**cfg.data.model_dump(mode="json", exclude_none=True), "classes": subset,
                "rest": "merge"}
        if o.rest_ratio is not None:
            data["rest_ratio"] = o.rest_ratio
        student = dict(specialist)
        if o.specialist_init:
            folder = Path(runner.root) / "init" / f"specialist-{m + 1}"
            if distributed.env_from_torchrun().is_main:
                write_specialist_init(generalist, meta, subset, folder)
            distributed.barrier()
            student["init"] = str(folder)
        train = {**cfg.train.model_dump(mode="json"),
                 "epochs": o.specialist_epochs or cfg.train.epochs}
        optim = cfg.optim.model_dump(mode="json")
        if o.specialist_lr is not None:
            optim["lr"] = o.specialist_lr
        return derive(cfg, f"specialist-{m + 1}", data=data, student=student, teacher=None,
                      losses=[{"name": "ce"}], train=train, optim=optim)


@torch.no_grad()
def generalist_probs(run_dir: str, dataset: Any, device: str = "auto",
                     batch_size: int = 512) -> torch.Tensor:
    """The generalist's predicted probabilities ``(N, K)`` on ``dataset``."""
    where = resolve_device(device)
    model = load_run_model(run_dir).to(where).eval()
    out = [F.softmax(model(to_batch(raw).inputs.to(where)).float(), -1).cpu()
           for raw in eval_loader(dataset, batch_size)]
    return torch.cat(out)


def write_specialist_init(generalist: str, meta: dict[str, Any], subset: list[int],
                          folder: Path) -> None:
    """A run model in ``folder``: the generalist with its head cut to ``subset`` + dustbin
    (module docstring); the tensors that depend on the class count are found by building
    the architecture for ``K`` and ``K + 1`` classes."""

    name, options = meta["name"], meta.get("options", {})
    k, shape, n = int(meta["num_classes"]), tuple(meta["input_shape"]), len(subset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name, n + 1, shape, **options)
        wide = create_model(name, k + 1, shape, **options).state_dict()
    source = read_tensors(Path(generalist) / WEIGHTS)
    rest = [c for c in range(k) if c not in subset]
    modules = dict(model.named_modules())
    state = model.state_dict()
    with torch.no_grad():
        for key, target in state.items():
            value = source.get(key)
            if value is None:
                continue
            if key in wide and wide[key].shape != value.shape and value.shape[0] == k:
                dustbin = value[rest].float().mean(0)
                owner = modules.get(key.rpartition(".")[0])
                if key.endswith("bias") and isinstance(owner, torch.nn.Linear):
                    dustbin = dustbin + torch.log(torch.tensor(float(len(rest))))
                value = torch.cat([value[subset], dustbin.to(value.dtype).unsqueeze(0)])
            if value.shape == target.shape:
                target.copy_(value)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS)
    save_run_model(folder, model, name=name, options=options, num_classes=n + 1,
                   input_shape=shape)


def _precision(cfg: RunConfig) -> str:
    return cfg.teacher.precision if isinstance(cfg.teacher, TeacherConfig) else "fp32"


def _train_seconds(run_dir: str) -> float:
    path = Path(run_dir) / "summary.json"
    return float(json.loads(path.read_text()).get("train_time_s", 0.0)) if path.is_file() \
        else 0.0


__all__ = ["CLUSTERS_FILE", "SpecialistOptions", "Specialists", "generalist_probs",
           "write_specialist_init"]
