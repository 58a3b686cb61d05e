"""Hand-made stores for the store tests: random top-k labels and quantised view parameters."""

import torch

from kdforge.store import SoftLabelStoreWriter, StoreLayout, quantize_crop, quantize_ratio

META = {
    "teacher": {"name": "resnet18", "sha256": "abc123"},
    "dataset": {"name": "tiny", "length": 10},
    "view": {"scale": [0.08, 1.0], "flip": 0.5},
    "store_seed": 7,
}


def random_views(layout, n, gen):
    """Random top-k log-probabilities and quantised view parameters for n views."""
    logits = torch.randn(n, layout.num_classes, generator=gen) * 3
    logp, indices = torch.log_softmax(logits, dim=1).topk(layout.top_k, dim=1)
    out = {"indices": indices, "logp": logp}
    if layout.view_kind != "none":
        c = layout.crop_size // 2
        start = torch.rand(n, c, generator=gen) * 0.5
        length = 0.1 + torch.rand(n, c, generator=gen) * 0.4
        out["crop"] = quantize_crop(torch.cat([start, length], dim=1))
        out["flip"] = torch.rand(n, generator=gen) < 0.5
    if layout.has_mix:
        out["partner"] = torch.randint(0, layout.num_samples, (n,), generator=gen)
        out["ratio"] = quantize_ratio(0.5 + 0.5 * torch.rand(n, generator=gen))
    return out


def build_store(path, layout, samples_per_shard=4, meta=META, seed=0):
    """Write a complete store; returns the per-view inputs, ordered (sample, view)."""
    gen = torch.Generator().manual_seed(seed)
    views = random_views(layout, layout.num_records, gen)
    writer = SoftLabelStoreWriter(path, layout, meta, samples_per_shard)
    V = layout.views_per_sample
    for shard_id in range(writer.num_shards):
        lo, hi = writer.shard_samples(shard_id)
        part = {k: v[lo * V : hi * V] for k, v in views.items()}
        writer.write_shard(shard_id, writer.encode(**part))
    writer.close()
    return views


def layout_of(**kw):
    base = dict(num_samples=10, views_per_sample=3, num_classes=20, top_k=5)
    base.update(kw)
    return StoreLayout(**base)
