"""``kdforge soft-labels``: run the teacher once over many random views, store the labels.

For every training sample, ``views_per_sample`` views are drawn with the configured
augmentation; their crop parameters are rounded to the store's grid *before* the view is
made, so the stored parameters replay the labelled view exactly. The teacher (or ensemble)
labels the views in large batches under ``torch.inference_mode``; the top-k classes and
their log-probabilities go into fixed-size records (:mod:`kdforge.teachers.store`).

Generation is resumable (finished shards are verified and skipped) and splits its shards
over ``torchrun`` processes. The training set is the one a run with the same ``data``
section trains on (after the validation split), so sample ``i`` of the store is sample
``i`` of that run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge import api
from kdforge.config import RunConfig, SoftLabelConfig, TeacherConfig
from kdforge.core.errors import ConfigError
from kdforge.data.augment import make_augment
from kdforge.engine import distributed
from kdforge.engine.trainer import resolve_device
from kdforge.teachers.store import (
    SoftLabelStore,
    SoftLabelStoreWriter,
    StoreLayout,
    quantize_crop,
    view_seed,
)

#: Views the store can replay: the teacher sees exactly the student's (augmented) input.
STORE_VIEWS = ("consistent", "fixed")


def teacher_identity(teachers: list[TeacherConfig]) -> list[dict[str, Any]]:
    """What the store records about its teacher(s): source and a checksum of the weights."""
    out = []
    for t in teachers:
        if t.run is not None:
            weights = Path(t.run) / "model.safetensors"
            out.append({"run": str(t.run), "weights_sha256": _sha256(weights)})
        elif t.name is not None:
            out.append({"name": t.name, "options": t.options,
                        "weights_sha256": _sha256(Path(t.weights)) if t.weights else None})
        else:
            raise ConfigError("a soft-label store is made from a trained teacher, not a store")
    return out


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"teacher weights {str(path)!r} do not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_run_config(cfg: SoftLabelConfig) -> RunConfig:
    """The data/teacher sections as a RunConfig, to build them the way training does."""
    return RunConfig(name=cfg.name, seed=cfg.seed, data=cfg.data,
                     student={"name": "logreg"}, teacher=cfg.teacher, ensemble=cfg.ensemble,
                     ensemble_weights=cfg.ensemble_weights)


def store_path(cfg: SoftLabelConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def generate(cfg: SoftLabelConfig, verbose: bool = True) -> dict[str, Any]:
    """Label ``views_per_sample`` views of every training sample; returns timing figures."""
    if cfg.view.name not in STORE_VIEWS:
        raise ConfigError(
            f"a store holds views both sides see alike; view {cfg.view.name!r} is not one of "
            f"{STORE_VIEWS}"
        )
    env = distributed.env_from_torchrun()
    device = resolve_device(cfg.device, env.local_rank)
    env = distributed.init(device)
    run_cfg = _as_run_config(cfg)
    data = api.build_data(run_cfg)
    k_classes, shape = data.splits.num_classes, data.splits.input_shape
    teacher = api.build_teacher(run_cfg, k_classes, shape)
    assert teacher is not None
    teacher.to(device)
    fixed = cfg.view.name == "fixed"
    augment = None if fixed else make_augment(shape, **cfg.view.options)
    views = 1 if fixed else cfg.store.views_per_sample
    source = _views_source(cfg, len(data.train), views, augment)
    seed = int(source.meta["store_seed"]) if source is not None else cfg.seed
    layout = StoreLayout(
        num_samples=len(data.train), views_per_sample=views, num_classes=k_classes,
        top_k=min(cfg.store.top_k, k_classes), value_format=cfg.store.value_format,
        view_kind="none" if fixed else ("image" if len(shape) == 3 else "signal"))
    meta = {
        "teacher": teacher_identity(cfg.teachers),
        "ensemble": cfg.ensemble if len(cfg.teachers) > 1 else None,
        "dataset": {"name": cfg.data.name, "length": len(data.train),
                    "options": cfg.data.options, "val_fraction": cfg.data.val_fraction},
        "view": {"name": cfg.view.name,
                 "augment": augment.config() if augment is not None else None},
        "store_seed": seed,
        "input_shape": list(shape),
        "views_from": str(source.path) if source is not None else None,
    }
    path = store_path(cfg)
    writer = SoftLabelStoreWriter(path, layout, meta, cfg.store.samples_per_shard)
    pending = writer.pending_shards()
    mine = pending[env.rank::env.world_size]
    start = time.perf_counter()
    labelled = 0
    teacher_time = 0.0
    for shard in mine:
        lo, hi = writer.shard_samples(shard)
        records, seconds = _label_shard(writer, teacher, data.train, lo, hi, views, augment,
                                        cfg, device, seed, source)
        writer.write_shard(shard, records)
        labelled += (hi - lo) * views
        teacher_time += seconds
        if verbose and env.is_main:
            print(f"shard {shard + 1}/{writer.num_shards}: samples {lo}-{hi - 1}, "
                  f"{(hi - lo) * views:,} views", flush=True)
    elapsed = time.perf_counter() - start
    distributed.barrier()
    if env.is_main:
        writer.close()
    stats = {"path": str(path), "views": labelled, "seconds": elapsed,
             "teacher_seconds": teacher_time,
             "views_per_s": labelled / max(elapsed, 1e-9),
             "bytes_per_view": layout.bytes_per_view,
             "skipped_shards": writer.num_shards - len(pending)}
    if verbose and env.is_main:
        print(f"store {path}: {labelled:,} views in {elapsed:.1f} s "
              f"({stats['views_per_s']:,.0f} views/s), {layout.bytes_per_view} bytes per view",
              flush=True)
    return stats


def _views_source(cfg: SoftLabelConfig, num_samples: int, views: int,
                  augment) -> SoftLabelStore | None:
    """The store whose views are to be labelled again (``store.views_from``), checked."""
    if cfg.store.views_from is None:
        return None
    source = SoftLabelStore(cfg.store.views_from)
    source.check_compatible(num_samples=num_samples, dataset=cfg.data.name)
    mine = {"name": cfg.view.name, "augment": augment.config() if augment is not None else None}
    theirs = source.meta.get("view")
    if source.views_per_sample != views or json.dumps(mine, sort_keys=True) != json.dumps(
            theirs, sort_keys=True):
        raise ConfigError(
            f"store.views_from: {source.path} holds {source.views_per_sample} views per sample "
            f"of view {theirs}; this config asks for {views} of {mine}. Use the same view "
            "section and views_per_sample"
        )
    return source


def _label_shard(writer: SoftLabelStoreWriter, teacher, train, lo: int, hi: int, views: int,
                 augment, cfg: SoftLabelConfig, device: torch.device, seed: int,
                 source: SoftLabelStore | None) -> tuple[np.ndarray, float]:
    """Records of all views of samples [lo, hi), ordered (sample, view)."""
    per_chunk = max(1, cfg.store.batch_size // views)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(view_seed(seed, torch.tensor([lo]), torch.tensor([0]))[0]))
    parts = []
    teacher_time = 0.0
    for first in range(lo, hi, per_chunk):
        last = min(hi, first + per_chunk)
        batch = train.__getitems__(list(range(first, last)))
        x = batch["input"].to(device)
        samples = torch.arange(first, last).repeat_interleave(views)
        view_ids = torch.arange(views).repeat(last - first)
        crop = flip = None
        if augment is not None:
            x = x.repeat_interleave(views, 0)
            if source is not None:  # the same geometry as the source store, view for view
                params = source.read(samples, view_ids).to(device).augment_params()
            else:
                params = augment.sample(x.shape[0], generator, device)
                params.crop = quantize_crop(params.crop)
            if params.noise_seed is not None or getattr(augment, "noise_std", 0) > 0:
                params.noise_seed = view_seed(seed, samples, view_ids).to(device)
            x = augment.apply(x, params)
            crop, flip = params.crop, params.flip
        t0 = time.perf_counter()
        with torch.inference_mode():
            logp = torch.log_softmax(teacher(x).logits.float(), dim=-1)
            values, indices = logp.topk(writer.layout.top_k, dim=-1)
        teacher_time += time.perf_counter() - t0
        parts.append(writer.encode(indices, values, crop=crop, flip=flip))
    return np.concatenate(parts), teacher_time
