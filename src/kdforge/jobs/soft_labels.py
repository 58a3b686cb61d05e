"""``kdforge soft-labels``: run the teacher once over many random views, store the labels.

For every training sample, ``views_per_sample`` views are drawn with the configured
augmentation; their crop parameters are rounded to the store's grid *before* the view is
made, so the stored parameters replay the labelled view exactly. The teacher (or ensemble)
labels the views in large batches under ``torch.inference_mode``; the top-k classes and
their log-probabilities go into fixed-size records (:mod:`kdforge.store`).

``view: {name: function_matching}`` stores the views of Beyer et al. 2022's function
matching: each view's consistent crop is mixed (mixup, Zhang et al. 2018, or CutMix, Yun et
al. 2019) with the same view id of a partner sample drawn from the whole training set, the
teacher labels the mixed input, and the record keeps the partner and the quantised ratio
(:class:`kdforge.store.MixedViews` says how every parameter is derived).

Generation is resumable (finished shards are verified and skipped) and splits its shards
over ``torchrun`` processes. The training set is the one a run with the same ``data``
section trains on (after the validation split), so sample ``i`` of the store is sample
``i`` of that run; ``meta.json`` records that data section and a fingerprint of the split's
inputs and labels (:func:`kdforge.store.split_fingerprint`), which a run checks before it
trains from the store.
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
from kdforge.config import STORE_VIEWS, RunConfig, SoftLabelConfig, TeacherConfig
from kdforge.core.errors import ConfigError
from kdforge.data.augment import Mixup, make_augment
from kdforge.data.views import FunctionMatchingView, build_view
from kdforge.engine import distributed
from kdforge.engine.runtime import resolve_device
from kdforge.store import (
    MixedViews,
    SoftLabelStore,
    SoftLabelStoreWriter,
    StoreLayout,
    check_samples,
    quantize_crop,
    split_fingerprint,
    view_meta,
    view_seed,
)

__all__ = ["STORE_VIEWS", "generate", "store_path", "teacher_identity"]


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
    if cfg.view.name not in STORE_VIEWS:  # SoftLabelConfig refuses it; built by hand?
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
    augment, mixup, labels = _store_view(cfg, shape, k_classes)  # options checked first
    teacher = api.build_teacher(run_cfg, k_classes, shape)
    assert teacher is not None
    teacher.to(device)
    views = 1 if cfg.view.name == "fixed" else cfg.store.views_per_sample
    described = view_meta(cfg.view.name, augment, mixup, labels)
    source = _views_source(cfg, data.train, views, described)
    seed = int(source.meta["store_seed"]) if source is not None else cfg.seed
    mixed = None
    if mixup is not None:
        assert augment is not None
        mixed = MixedViews(augment, mixup, seed, len(data.train))
    layout = _layout(cfg, len(data.train), views, k_classes, shape, mixed is not None)
    meta = _meta(cfg, data.train, described, seed, shape, source)
    writer = SoftLabelStoreWriter(store_path(cfg), layout, meta, cfg.store.samples_per_shard)
    pending = writer.pending_shards()
    start = time.perf_counter()
    labelled, teacher_time = 0, 0.0
    for shard in pending[env.rank::env.world_size]:
        lo, hi = writer.shard_samples(shard)
        records, seconds = _label_shard(writer, teacher, data.train, lo, hi, views, augment,
                                        cfg, device, seed, source, mixed)
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
    stats = {"path": str(store_path(cfg)), "views": labelled, "seconds": elapsed,
             "teacher_seconds": teacher_time,
             "views_per_s": labelled / max(elapsed, 1e-9),
             "bytes_per_view": layout.bytes_per_view,
             "skipped_shards": writer.num_shards - len(pending)}
    if verbose and env.is_main:
        print(f"store {stats['path']}: {labelled:,} views in {elapsed:.1f} s "
              f"({stats['views_per_s']:,.0f} views/s), {layout.bytes_per_view} bytes per view",
              flush=True)
    return stats


def _layout(cfg: SoftLabelConfig, num_samples: int, views: int, num_classes: int,
            shape: tuple[int, ...], has_mix: bool) -> StoreLayout:
    fixed = cfg.view.name == "fixed"
    return StoreLayout(
        num_samples=num_samples, views_per_sample=views, num_classes=num_classes,
        top_k=min(cfg.store.top_k, num_classes), value_format=cfg.store.value_format,
        view_kind="none" if fixed else ("image" if len(shape) == 3 else "signal"),
        has_mix=has_mix)


def _meta(cfg: SoftLabelConfig, train: Any, described: dict[str, Any], seed: int,
          shape: tuple[int, ...], source: SoftLabelStore | None) -> dict[str, Any]:
    """What ``meta.json`` records: the teacher(s), the data section and the fingerprint of
    its training split, the view, the store seed and the input shape."""
    return {
        "teacher": teacher_identity(cfg.teachers),
        "ensemble": cfg.ensemble if len(cfg.teachers) > 1 else None,
        "dataset": {"name": cfg.data.name, "length": len(train),
                    "options": cfg.data.options, "val_fraction": cfg.data.val_fraction,
                    "fingerprint": split_fingerprint(train)},
        "view": described,
        "store_seed": seed,
        "input_shape": list(shape),
        "views_from": str(source.path) if source is not None else None,
    }


def _store_view(cfg: SoftLabelConfig, shape: tuple[int, ...], num_classes: int
                ) -> tuple[Any, Mixup | None, bool]:
    """The view's augmentation, mixup (function matching) and ``labels`` option, built and
    checked with the options a training run's ``view`` section takes."""
    if cfg.view.name == "fixed":
        return None, None, False
    if cfg.view.name == "consistent":
        return make_augment(shape, **cfg.view.options), None, False
    view = build_view(cfg.view.name, shape, num_classes, **cfg.view.options)
    assert isinstance(view, FunctionMatchingView)
    return view.augment, view.mixup, view.labels


#: The parts of ``meta["view"]`` that fix the views' geometry (``labels`` only matters to
#: training, so a store may relabel the views of one that differs in it).
_GEOMETRY = ("name", "augment", "mix")


def _views_source(cfg: SoftLabelConfig, train: Any, views: int,
                  described: dict[str, Any]) -> SoftLabelStore | None:
    """The store whose views are to be labelled again (``store.views_from``), checked: made
    from the same training samples, with the same views."""
    if cfg.store.views_from is None:
        return None
    source = SoftLabelStore(cfg.store.views_from)
    source.check_compatible(num_samples=len(train), dataset=cfg.data.name)
    check_samples(source, train, cfg.data)
    theirs = source.meta.get("view")
    mine = {k: v for k, v in described.items() if k in _GEOMETRY}
    geometry = {k: v for k, v in theirs.items() if k in _GEOMETRY} if isinstance(
        theirs, dict) else theirs
    if source.views_per_sample != views or json.dumps(mine, sort_keys=True) != json.dumps(
            geometry, sort_keys=True):
        raise ConfigError(
            f"store.views_from: {source.path} holds {source.views_per_sample} views per sample "
            f"of view {geometry}; this config asks for {views} of {mine}. Use the same view "
            "section and views_per_sample"
        )
    if source.layout.has_mix != ("mix" in mine):
        raise ConfigError(f"store.views_from: {source.path} has has_mix="
                          f"{source.layout.has_mix}, which does not fit view {mine['name']!r}")
    return source


def _label_shard(writer: SoftLabelStoreWriter, teacher, train, lo: int, hi: int, views: int,
                 augment, cfg: SoftLabelConfig, device: torch.device, seed: int,
                 source: SoftLabelStore | None,
                 mixed: MixedViews | None = None) -> tuple[np.ndarray, float]:
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
        crop = flip = partner = ratio = None
        if mixed is not None:
            x = x.repeat_interleave(views, 0)
            x, crop, flip, partner, ratio = _mixed_views(mixed, train, x, samples, view_ids,
                                                         source)
        elif augment is not None:
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
        parts.append(writer.encode(indices, values, crop=crop, flip=flip, partner=partner,
                                   ratio=ratio))
    return np.concatenate(parts), teacher_time


def _mixed_views(mixed: MixedViews, train, x: torch.Tensor, samples: torch.Tensor,
                 view_ids: torch.Tensor, source: SoftLabelStore | None) -> tuple[torch.Tensor, ...]:
    """Function matching: the mixed inputs of views ``(samples, view_ids)`` and what their
    records store (own crop, flip, partner, ratio); ``x`` holds the samples' inputs.

    Every parameter is a pure function of (store seed, sample, view) (see
    :class:`MixedViews`), or is read from the ``views_from`` store, so the partner's view is
    the crop its own record (partner, view) holds, whichever shard or process writes it.
    """
    if source is not None:
        records = source.read(samples, view_ids)
        own, partner, ratio = records.augment_params(), records.partner, records.ratio
        assert partner is not None and ratio is not None
        partner_view = source.read(partner, view_ids).augment_params()
    else:
        own, partner, ratio = mixed.draw(samples, view_ids)
        partner_view = mixed.crops(partner, view_ids)
    x_partner = train.__getitems__(partner.tolist())["input"]
    inputs, _ = mixed.render(x, x_partner, samples, view_ids, own, partner, partner_view, ratio)
    return inputs, own.crop, own.flip, partner, ratio
