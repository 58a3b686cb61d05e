"""Shared pieces of the store tests that need a trained teacher and generated stores."""

import math

import pytest
import torch

from kdforge import api
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.core.outputs import Batch
from kdforge.store import StoreView
from tests.conftest import synthetic_config


@pytest.fixture
def teacher(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, name="teacher", student={"name": "cnn2d"}))
    return api.train(cfg, verbose=False).run_dir


def store_config(tmp_path, teacher, **extra):
    base = synthetic_config(tmp_path)
    cfg = {"name": "store", "output_dir": str(tmp_path / "stores"), "data": base["data"],
           "teacher": {"run": str(teacher)}, "device": "cpu",
           "store": {"views_per_sample": 4, "top_k": 3, "samples_per_shard": 40,
                     "batch_size": 64}}
    cfg.update(extra)
    return parse_config(cfg, kind=SoftLabelConfig)


@pytest.fixture
def labelled(monkeypatch):
    """Every input the teacher labels while a store is generated, in call order."""
    seen = []
    build = api.build_teacher

    def spy(*args, **kwargs):
        net = build(*args, **kwargs)
        if net is not None:
            net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
        return net

    monkeypatch.setattr(api, "build_teacher", spy)
    return seen


def fm_view(mode, **options):
    return {"name": "function_matching", "mode": mode, "alpha": 0.5, **options}


def replay(store, data, samples, repeats=1, seed=3):
    view = StoreView(store, tuple(data.splits.input_shape), repeats=repeats, dataset=data.train)
    items = data.train.__getitems__(samples)
    return view(Batch(items["input"], items["target"], index=items["index"]),
                torch.Generator().manual_seed(seed))


def check_mix_from_the_math(store, data, out, mode):
    """The replayed rows equal own view (x) partner view, mixed as the stored ratio says."""
    rec = out.view.records
    aug = StoreView(store, tuple(data.splits.input_shape), dataset=data.train).augment
    seeds = store.view_seed if getattr(aug, "noise_std", 0) > 0 else (lambda s, v: None)
    own_x = data.train.__getitems__(out.view.sample.tolist())["input"]
    own = aug.apply(own_x, rec.augment_params(noise_seed=seeds(out.view.sample, out.view.view)))
    partner_rec = store.read(rec.partner, out.view.view)
    part_x = data.train.__getitems__(rec.partner.tolist())["input"]
    part = aug.apply(part_x, partner_rec.augment_params(
        noise_seed=seeds(rec.partner, out.view.view)))
    if mode == "mixup":
        r = rec.ratio.view(-1, *[1] * (own.dim() - 1))
        assert torch.allclose(out.inputs, r * own + (1 - r) * part, atol=1e-6)
        assert torch.equal(out.view.mix.ratio, rec.ratio)
        return
    size = own.shape[2:]
    for b in range(out.inputs.shape[0]):  # CutMix: one box of the partner, the rest own
        pasted = (out.inputs[b] == part[b]).all(0) & (out.inputs[b] != own[b]).any(0)
        assert ((out.inputs[b] == own[b]).all(0) | pasted).all()
        side = math.sqrt(1 - float(rec.ratio[b]))
        extent = [round((1 - float(rec.ratio[b])) * size[0])] if len(size) == 1 else \
            [round(side * n) for n in size]
        where = pasted.nonzero()
        assert where.shape[0] == math.prod(extent)  # a whole box of that size...
        if where.numel():  # ...in one piece
            assert (where.max(0).values - where.min(0).values + 1).tolist() == extent
        kept = 1 - math.prod(extent) / math.prod(size)
        assert float(out.view.mix.ratio[b]) == pytest.approx(kept, abs=1e-6)
