"""Function-matching views of a store (kdforge.store.mixed)."""

import pytest
import torch

from kdforge.core.errors import ConfigError
from kdforge.data.augment import ImageAugment, Mixup, SignalAugment
from kdforge.store import MixedViews, quantize_crop, quantize_ratio


@pytest.mark.parametrize("augment", [ImageAugment(), SignalAugment(flip=0.5)])
def test_mixed_views_are_a_pure_function_of_sample_and_view(augment):
    n = 60
    mixed = MixedViews(augment, Mixup(alpha=1.0, mode="cutmix"), store_seed=3, num_samples=n)
    sample, view = torch.arange(n).repeat_interleave(5), torch.arange(5).repeat(n)
    own, partner, ratio = mixed.draw(sample, view)
    # partners: other samples, from the whole set, not only near the sample
    assert (partner != sample).all() and partner.min() >= 0 and partner.max() < n
    assert torch.unique(partner).numel() > 0.9 * n
    assert ((partner - sample).abs() > n // 2).any()
    # crops on the store's grid; the partner's view of a sample is that sample's own crop
    assert torch.equal(quantize_crop(own.crop), own.crop)
    assert torch.equal(mixed.crops(sample, view).crop, own.crop)
    assert torch.equal(quantize_ratio(ratio), ratio) and ratio.min() >= 0.5
    for b in (0, 17, 299):  # one view alone gives its batch row
        alone, p, r = mixed.draw(sample[b:b + 1], view[b:b + 1])
        assert torch.equal(alone.crop[0], own.crop[b]) and alone.flip[0] == own.flip[b]
        assert p[0] == partner[b] and r[0] == ratio[b]
    size = (8, 8) if isinstance(augment, ImageAugment) else (40,)
    mix = mixed.mix_params(sample, view, partner, ratio, size)
    again = mixed.mix_params(sample[5:6], view[5:6], partner[5:6], ratio[5:6], size)
    assert torch.equal(again.box[0], mix.box[5]) and again.ratio[0] == mix.ratio[5]
    # the box has the area 1 - ratio, snapped to whole pixels
    pixels = torch.tensor(size, dtype=torch.float64)
    rank = len(size)
    box_pixels = (mix.box[:, rank:].double() * pixels).prod(1)
    assert torch.allclose(1 - box_pixels / pixels.prod(), mix.ratio.double(), atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        MixedViews(augment, Mixup(), store_seed=3, num_samples=1)
