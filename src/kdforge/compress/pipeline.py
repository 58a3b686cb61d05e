"""``kdforge compress CONFIG``: stages on a trained model, each fine-tuned by distillation.

The trained run's model is the *original*: it is compressed, and it is the teacher of every
fine-tune. Each *chain* (``none``, ``ce``, ``kd``, ...: see
:class:`~kdforge.compress.config.CompressConfig`) runs every stage in order on its own
model: the stage compresses it (:meth:`~kdforge.compress.stages.Stage.apply`), the chain's
losses fine-tune it at the config's budget (a :class:`~kdforge.distill.Distiller` on the one
:class:`~kdforge.engine.Trainer`; chain ``none`` does not fine-tune), and the stage makes it
deployable (:meth:`~kdforge.compress.stages.Stage.finish`). So ``none`` is the compressed
model with no fine-tune at all, ``ce`` recovers with the labels, ``kd`` with the original
as teacher, at the same budget.

Everything lands in ``output_dir/name/``: ``config.yaml``, ``CHAIN/STAGE/`` (the stage's
model and ``stage.json``, its accuracy and facts; a fine-tune's checkpoint and metrics),
``compress.json`` / ``compress.md`` (one record per stage) and ``compress.png``. A stage
that fails leaves every finished one intact; ``--resume`` continues at the first unfinished
stage (an interrupted fine-tune from its checkpoint).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.compress.config import CompressConfig
from kdforge.compress.measure import (
    accuracy_and_agreement,
    count_parameters,
    predictions,
    time_interleaved,
)
from kdforge.compress.stages import (
    Artefact,
    Stage,
    StageContext,
    build_stage,
    read_stage_facts,
    write_stage_facts,
)
from kdforge.config import LossConfig, TrainConfig, load_config
from kdforge.core.errors import ConfigError
from kdforge.core.faults import fault_point
from kdforge.core.files import check_writable, remove_temporaries, write_text
from kdforge.engine.checkpoint import CHECKPOINT

CONFIG_FILE = "config.yaml"
RESULTS = "compress"
CALIBRATION_BATCHES = 8


def compress(cfg: CompressConfig, *, resume: bool = False, overwrite: bool = False,
             verbose: bool = True) -> dict[str, Any]:
    """Run (or resume) the pipeline of ``cfg``; returns ``{"runs": [record per stage]}``."""
    from kdforge.models.runs import load_run_model, read_model_description

    root = _root(cfg, resume=resume, overwrite=overwrite)
    stages = [build_stage(s.name, s.options) for s in cfg.stages]  # options checked first
    description = read_model_description(cfg.run)
    original = load_run_model(cfg.run).eval()
    data = _data(cfg)
    ctx = _context(cfg, data, description)
    reference, targets = predictions(original, data.test)
    root.mkdir(parents=True, exist_ok=True)
    if resume:  # what killed writes left (.NAME.RANDOM.tmp), in every stage's directory
        remove_temporaries(root, recursive=True)
    write_text(root / CONFIG_FILE, _yaml(cfg))
    done: dict[str, dict[str, tuple[Artefact, dict[str, Any]]]] = {}
    for chain, losses in cfg.chains.items():
        current: nn.Module = original
        done[chain] = {}
        for stage_cfg, stage in zip(cfg.stages, stages, strict=True):
            out = root / chain / stage_cfg.name
            tune = bool(losses) and stage_cfg.finetune
            fault_point("compress-stage")  # between two stages (crash tests; else free)
            artefact, facts = _stage(cfg, stage, current, original, ctx, data, out,
                                     losses if tune else [], reference, targets, verbose)
            done[chain][stage_cfg.name] = (artefact, facts)
            current = artefact.float_module
    original_facts = {"params": count_parameters(original),
                      "file_bytes": _run_bytes(cfg.run),
                      **accuracy_and_agreement(reference, targets, reference)}
    records = _records(cfg, original, original_facts, done, ctx)
    out = {"config": str(root / CONFIG_FILE), "pair": cfg.name, "runs": records}
    from kdforge.compress.report import write_report

    write_report(root, RESULTS, out)
    return out


def _root(cfg: CompressConfig, *, resume: bool, overwrite: bool) -> Path:
    root = Path(cfg.output_dir) / cfg.name
    check_writable(root)  # a file, read-only or full: refused before any stage
    written = root / CONFIG_FILE
    if written.is_file() and not overwrite:
        if not resume:
            raise ConfigError(f"{str(root)!r} already holds a compression pipeline; continue it "
                              f"with --resume, choose another name (--set name=...), or "
                              "--overwrite")
        if written.read_text() != _yaml(cfg):
            raise ConfigError(f"{str(root)!r} holds a pipeline of another config; --resume "
                              "continues the same config only: rerun with --overwrite or "
                              "choose another name")
    elif overwrite and root.exists():
        shutil.rmtree(root)
    return root


def _yaml(cfg: CompressConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _data(cfg: CompressConfig):
    from kdforge import api

    run_cfg = load_config(Path(cfg.run) / api.CONFIG_FILE, relative_to_file=False)
    if cfg.data is not None:
        run_cfg = run_cfg.model_copy(update={"data": cfg.data})
    return api.build_data(run_cfg)


def _context(cfg: CompressConfig, data: Any, description: dict[str, Any]) -> StageContext:
    from kdforge.data.loaders import load_batch

    n = len(data.train)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=gen)[:CALIBRATION_BATCHES * 64].tolist()
    calibration = [load_batch(data.train, order[i:i + 64]).inputs
                   for i in range(0, len(order), 64)]
    return StageContext(example=calibration[0][:1].clone(), calibration=calibration,
                        description=description, seed=cfg.seed, threads=cfg.latency.threads,
                        test=data.test)


def _stage(cfg: CompressConfig, stage: Stage, current: nn.Module, original: nn.Module,
           ctx: StageContext, data: Any, out: Path, losses: list[LossConfig],
           reference: torch.Tensor, targets: torch.Tensor,
           verbose: bool) -> tuple[Artefact, dict[str, Any]]:
    """One chain's stage: read back if finished, else apply, fine-tune, finish, measure."""
    facts = read_stage_facts(out)
    if facts is not None:
        return stage.load(out, ctx, previous=current), facts
    torch.manual_seed(cfg.seed)
    model = stage.apply(copy.deepcopy(current), ctx, finetune=bool(losses))
    applied = dict(getattr(stage, "report", {}) or {})
    if losses:
        _finetune(cfg, model, original, losses, data, out, verbose)
    artefact = stage.finish(model, ctx, out, previous=current)
    finished = dict(getattr(stage, "report", {}) or {})  # what finishing found (an export)
    preds, _ = predictions(artefact.module, data.test)
    facts = {**applied, **finished, **artefact.facts, "finetuned": bool(losses),
             "params": count_parameters(artefact.float_module),
             "file_bytes": artefact.file_bytes,
             **accuracy_and_agreement(preds, targets, reference)}
    write_stage_facts(out, facts)
    return artefact, facts


def _finetune(cfg: CompressConfig, model: nn.Module, original: nn.Module,
              losses: list[LossConfig], data: Any, out: Path, verbose: bool) -> None:
    """Fine-tune ``model`` in place with ``losses``; the original teaches (a frozen copy)."""
    from kdforge import api
    from kdforge.distill.distiller import Distiller
    from kdforge.engine.trainer import Trainer
    from kdforge.losses.base import LOSSES
    from kdforge.teachers.module import ModuleTeacher

    model.requires_grad_(True)
    frozen = copy.deepcopy(original)
    teacher = ModuleTeacher(frozen) if any(LOSSES.get(c.name).needs_teacher
                                           for c in losses) else None
    step = Distiller(model, teacher, api.build_losses(losses), eval_teacher=frozen)
    f = cfg.finetune
    trainer = Trainer(step, data.train, data.val, num_classes=data.num_classes,
                      optim=f.optim, schedule=f.schedule,
                      train=TrainConfig(epochs=f.epochs, device=f.device),
                      batch_size=f.batch_size or (cfg.data.batch_size if cfg.data else 128),
                      seed=cfg.seed, run_dir=out, verbose=verbose,
                      title=f"{out.parent.name}/{out.name}")
    trainer.fit(resume=(out / CHECKPOINT).is_file())
    model.cpu().eval()


def _run_bytes(run_dir: str) -> int:
    from kdforge.models.runs import MODEL_FILE, WEIGHTS

    return sum((Path(run_dir) / f).stat().st_size for f in (WEIGHTS, MODEL_FILE))


def _records(cfg: CompressConfig, original: nn.Module, original_facts: dict[str, Any],
             done: dict[str, dict[str, tuple[Artefact, dict[str, Any]]]],
             ctx: StageContext) -> list[dict[str, Any]]:
    """One flat record per stage (``original`` first): sizes and latency of the measured
    chain's model (``kd`` if there is one: every chain's model has the same structure),
    and every chain's accuracy and agreement with the original."""
    chains = list(cfg.chains)
    timed = "kd" if "kd" in chains else chains[-1]
    modules = {"original": original, **{s.name: done[timed][s.name][0].module
                                        for s in cfg.stages}}
    lat = cfg.latency
    times = time_interleaved(modules, ctx.example, batches=lat.batches, n_threads=lat.threads,
                             warmup=lat.warmup, repeats=lat.repeats, rounds=lat.rounds,
                             seed=cfg.seed)
    rows = []
    for stage in ["original", *(s.name for s in cfg.stages)]:
        per_chain = {c: original_facts if stage == "original" else done[c][stage][1]
                     for c in chains}
        main = per_chain[timed]
        row: dict[str, Any] = {"pair": cfg.name, "stage": stage, "params": main["params"],
                               "file_bytes": main["file_bytes"]}
        row.update({f"latency_ms_b{b}": times[stage][b] for b in lat.batches})
        for chain, facts in per_chain.items():
            key = chain.replace("+", "_")
            row[f"{key}_accuracy"] = facts["accuracy"]
            row[f"{key}_agreement"] = facts["agreement"]
        row["agreement"] = main["agreement"]
        row["latency_threads"] = lat.threads
        skip = {"accuracy", "agreement", "params", "file_bytes", "finetuned"}
        row.update({k: v for k, v in main.items() if k not in skip and k not in row})
        rows.append(row)
    return rows


__all__ = ["compress"]
