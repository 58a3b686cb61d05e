"""The training read path (a uint8 gather + decode_bytes) against the structured path (raw + decode)."""

import dataclasses

import pytest
import torch

from kdforge.store import SoftLabelStore, StoreError
from tests.store.builders import build_store, layout_of


@pytest.mark.parametrize("samples_per_shard", [10, 3])  # one shard (fast path), four shards
@pytest.mark.parametrize("layout_kw", [
    {"value_format": "uint8", "view_kind": "image", "has_mix": True},
    {"value_format": "fp16", "view_kind": "signal"},
    {"value_format": "uint8", "view_kind": "none", "num_classes": 70000},  # uint32 indices
])
def test_read_equals_decode_of_raw(tmp_path, samples_per_shard, layout_kw):
    layout = layout_of(**layout_kw)
    build_store(tmp_path / "s", layout, samples_per_shard=samples_per_shard)
    store = SoftLabelStore(tmp_path / "s")
    gen = torch.Generator().manual_seed(3)
    sample = torch.randint(layout.num_samples, (40,), generator=gen)
    view = torch.randint(layout.views_per_sample, (40,), generator=gen)
    fast, slow = store.read(sample, view), layout.decode(store.raw(sample, view))
    for field in dataclasses.fields(fast):
        a, b = getattr(fast, field.name), getattr(slow, field.name)
        assert (a is None) == (b is None), field.name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), field.name
    empty = store.read(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert len(empty) == 0 and empty.indices.shape == (0, layout.top_k)


def test_read_names_ids_out_of_range(tmp_path):
    layout = layout_of()
    build_store(tmp_path / "s", layout)
    store = SoftLabelStore(tmp_path / "s")
    with pytest.raises(StoreError, match=r"sample ids must lie in \[0, 10\)"):
        store.read(torch.tensor([0, 10]), torch.tensor([0, 0]))
    with pytest.raises(StoreError, match=r"view ids must lie in \[0, 3\)"):
        store.read(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(StoreError, match="same length"):
        store.read(torch.tensor([0, 1]), torch.tensor([0]))
