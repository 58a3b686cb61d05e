"""The record layout, encoding and decoding (kdforge.store.format, kdforge.store.codec)."""

import json
import math

import numpy as np
import pytest
import torch

from kdforge.core.errors import KDForgeError
from kdforge.store import (
    SoftLabelStore,
    SoftLabelStoreWriter,
    StoreError,
    StoreLayout,
    quantize_crop,
)
from tests.store.builders import META, build_store, layout_of

# --- layout ------------------------------------------------------------------------------


def test_bytes_per_view_for_each_format():
    assert layout_of(value_format="uint8", view_kind="image").bytes_per_view == 20
    assert layout_of(value_format="fp16", view_kind="image").bytes_per_view == 25
    assert layout_of(value_format="uint8", view_kind="signal").bytes_per_view == 18
    assert layout_of(value_format="uint8", view_kind="none").bytes_per_view == 15
    assert layout_of(value_format="uint8", has_mix=True).bytes_per_view == 25
    assert layout_of(num_classes=70000).bytes_per_view == 30
    dtype = layout_of().record_dtype()
    assert dtype.isalignedstruct is False and dtype.itemsize == 20
    assert layout_of().index_dtype == "uint16"
    assert layout_of(num_classes=65535).index_dtype == "uint16"
    assert layout_of(num_classes=65536).index_dtype == "uint32"


def test_layout_json_round_trip_and_validation():
    layout = layout_of(value_format="fp16", view_kind="signal", has_mix=True, value_max=12.0)
    data = json.loads(json.dumps(layout.to_dict()))
    assert StoreLayout.from_dict(data) == layout
    data["index_dtype"] = "uint32"
    with pytest.raises(StoreError, match="index_dtype"):
        StoreLayout.from_dict(data)
    with pytest.raises(StoreError, match="top_k"):
        layout_of(top_k=21)
    with pytest.raises(StoreError, match="value_format"):
        layout_of(value_format="int4")
    assert issubclass(StoreError, KDForgeError)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("value_format", ["uint8", "fp16"])
@pytest.mark.parametrize("view_kind,has_mix", [("image", False), ("signal", True), ("none", False)])
def test_round_trip(tmp_path, value_format, view_kind, has_mix):
    layout = layout_of(value_format=value_format, view_kind=view_kind, has_mix=has_mix)
    views = build_store(tmp_path / "store", layout, samples_per_shard=4)  # shards 4, 4, 2
    store = SoftLabelStore(tmp_path / "store")
    store.verify()
    assert store.num_shards == 3
    V = layout.views_per_sample
    sample = torch.tensor([9, 0, 5, 5, 3, 8])
    view = torch.tensor([2, 0, 1, 2, 0, 1])
    rec = store.read(sample, view)
    row = sample * V + view
    assert rec.indices.dtype == torch.int64 and rec.logp.dtype == torch.float32
    assert torch.equal(rec.indices, views["indices"][row])
    expected = views["logp"][row]
    if value_format == "uint8":
        assert (rec.logp - expected).abs().max() <= layout.step / 2 + 1e-6
    else:
        assert torch.equal(rec.logp, expected.half().float())
    if view_kind == "none":
        assert rec.crop is None and rec.flip is None
    else:
        assert rec.crop.dtype == torch.float32 and rec.crop.shape == (6, layout.crop_size)
        assert torch.equal(rec.crop, views["crop"][row])  # exact: the quantised values
        assert torch.equal(rec.flip, views["flip"][row])
    if has_mix:
        assert torch.equal(rec.partner, views["partner"][row])
        assert torch.equal(rec.ratio, views["ratio"][row])
    else:
        assert rec.partner is None and rec.ratio is None


def test_uint32_indices_are_exact_for_many_classes(tmp_path):
    layout = layout_of(num_classes=70000, num_samples=4, views_per_sample=2)
    assert layout.index_dtype == "uint32"
    assert layout.record_dtype()["indices"].base == np.dtype("<u4")
    views = build_store(tmp_path / "s", layout)
    indices = views["indices"].clone()
    indices[0] = torch.tensor([69999, 65535, 65536, 0, 12345])
    writer = SoftLabelStoreWriter(tmp_path / "s2", layout, META, samples_per_shard=4)
    writer.write_shard(0, writer.encode(indices, views["logp"], views["crop"], views["flip"]))
    writer.close()
    rec = SoftLabelStore(tmp_path / "s2").read(
        torch.arange(4).repeat_interleave(2), torch.arange(2).repeat(4)
    )
    assert torch.equal(rec.indices, indices)


def test_uint8_quantisation_bound_and_clamping():
    layout = layout_of(num_samples=1, views_per_sample=1)
    logp = torch.tensor([[0.0, -0.03, -5.0, -15.99, -math.inf]])
    rec = layout.decode(
        layout.encode(
            torch.tensor([[0, 1, 2, 3, 4]]),
            logp,
            quantize_crop(torch.tensor([[0.0, 0.0, 1.0, 1.0]])),
        )
    )
    assert (rec.logp[0, :4] - logp[0, :4]).abs().max() <= layout.step / 2 + 1e-6
    assert rec.logp[0, 4] == pytest.approx(-16.0)  # -inf is clamped to -value_max
    fp = layout_of(num_samples=1, views_per_sample=1, value_format="fp16")
    rec = fp.decode(
        fp.encode(torch.tensor([[0, 1, 2, 3, 4]]), logp, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    )
    assert rec.logp[0, 4] == -65504.0 and torch.isfinite(rec.logp).all()


def test_encode_validation():
    layout = layout_of(num_samples=2, views_per_sample=1)
    idx = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    logp = torch.full((2, 5), -2.0)
    crop = quantize_crop(torch.tensor([[0.1, 0.2, 0.5, 0.5]] * 2))
    with pytest.raises(StoreError, match=r"\[0, 20\)"):
        layout.encode(idx + 15, logp, crop)
    with pytest.raises(StoreError, match="distinct"):
        layout.encode(torch.tensor([[0, 0, 1, 2, 3]] * 2), logp, crop)
    with pytest.raises(StoreError, match="<= 0"):
        layout.encode(idx, -logp, crop)
    with pytest.raises(StoreError, match="NaN"):
        layout.encode(idx, logp.clone().fill_(math.nan), crop)
    with pytest.raises(StoreError, match="quantize_crop"):
        layout.encode(idx, logp, torch.tensor([[0.1234, 0.2, 0.5, 0.5]] * 2))
    with pytest.raises(StoreError, match="crop is required"):
        layout.encode(idx, logp)
    with pytest.raises(StoreError, match="has_mix=False"):
        layout.encode(idx, logp, crop, partner=torch.tensor([0, 1]), ratio=torch.tensor([1.0, 1.0]))
    mix = layout_of(num_samples=2, views_per_sample=1, has_mix=True)
    with pytest.raises(StoreError, match="sample ids"):
        mix.encode(idx, logp, crop, partner=torch.tensor([0, 2]), ratio=torch.tensor([1.0, 1.0]))
    with pytest.raises(StoreError, match="quantize_ratio"):
        mix.encode(idx, logp, crop, partner=torch.tensor([0, 1]), ratio=torch.tensor([0.7777, 1.0]))
