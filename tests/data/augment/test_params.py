"""Recorded augmentation parameters: containers, checks, devices, dtypes."""

from __future__ import annotations

import pytest
import torch

from kdforge.core.errors import ConfigError
from kdforge.data.augment import (
    AugmentParams,
    ImageAugment,
    MixParams,
    Mixup,
    SignalAugment,
)
from tests.data.augment.helpers import gen, images, signals


def test_params_helpers() -> None:
    p = SignalAugment(noise_std=0.1).sample(5, gen(24))
    q = SignalAugment(noise_std=0.1).sample(3, gen(25))
    both = AugmentParams.cat([p, q])
    assert len(both) == 8 and torch.equal(both.select(torch.arange(5, 8)).noise_seed, q.noise_seed)
    assert len(p.select(2)) == 1 and len(p.select(slice(1, 4))) == 3
    assert len(p.select(torch.tensor([True, False, True, False, False]))) == 2
    assert len(AugmentParams()) == 0
    with pytest.raises(ConfigError, match="noise_seed"):
        AugmentParams.cat([p, SignalAugment().sample(2, gen(0))])
    with pytest.raises(ConfigError, match="empty"):
        AugmentParams.cat([])
    with pytest.raises(ConfigError, match="unknown keys.*box"):
        AugmentParams.from_dict({"box": torch.zeros(2, 4)})
    with pytest.raises(ConfigError, match="batch size"):
        AugmentParams(crop=torch.zeros(3, 4), flip=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"\(B, 4\)"):
        AugmentParams(crop=torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="partner is required"):
        MixParams(ratio=torch.ones(2))
    m = Mixup().sample(4, gen(26))
    assert len(MixParams.cat([m, m])) == 8 and len(m.to("cpu")) == 4
    restored = MixParams.from_dict({k: v.tolist() for k, v in m.as_dict().items()})
    assert restored.partner.dtype == torch.int64 and torch.equal(restored.ratio, m.ratio)


def test_apply_rejects_mismatched_params_and_inputs() -> None:
    aug = ImageAugment()
    x = images(b=4)
    with pytest.raises(ConfigError, match="4 rows but the batch has 3"):
        aug.apply(x[:3], aug.sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, 4\) crop"):
        aug.apply(x, SignalAugment().sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, 2\) windows"):
        SignalAugment().apply(signals(b=4), aug.sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\).*\(4, 2, 40\)"):
        aug(signals(b=4), gen(0))
    with pytest.raises(ConfigError, match="floating-point"):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), gen(0))
    with pytest.raises(ConfigError, match="same shape"):
        Mixup().apply_pair(x, x[:2], Mixup().sample(4, gen(0)))
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        Mixup().mix_targets(torch.tensor([0, 1, 2, 3]), Mixup().sample(4, gen(0)), 3)


def test_identity_params_reproduce_the_input() -> None:
    x = images(b=4, h=9, w=14)
    out = ImageAugment().apply(x, AugmentParams.identity(4, rank=2))
    assert torch.allclose(out, x, atol=1e-5)
    s = signals(b=4, n=33)
    assert torch.allclose(
        SignalAugment(noise_std=1.0).apply(s, AugmentParams.identity(4, 1)), s, atol=1e-5
    )
    assert torch.allclose(ImageAugment().apply(x, AugmentParams()), x, atol=1e-5)


def test_params_land_on_requested_device_and_generator_is_advanced() -> None:
    g = gen(9)
    first = ImageAugment().sample(4, g, "cpu")
    second = ImageAugment().sample(4, g, torch.device("cpu"))
    assert first.crop.device.type == "cpu" and not torch.equal(first.crop, second.crop)


def test_same_seed_same_params_and_different_seed_different() -> None:
    for aug in (ImageAugment(), SignalAugment(flip=0.5, noise_std=0.1)):
        a, b, c = aug.sample(64, gen(7)), aug.sample(64, gen(7)), aug.sample(64, gen(8))
        for name, value in a.as_dict().items():
            assert torch.equal(value, b.as_dict()[name])
            assert not torch.equal(value, c.as_dict()[name])
    mix = Mixup(mode="cutmix")
    a, b, c = (mix.sample(8, g, size=(32, 32)) for g in (gen(7), gen(7), gen(8)))
    assert torch.equal(a.ratio, b.ratio) and torch.equal(a.box, b.box)
    assert not torch.equal(a.ratio, c.ratio)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_kept(dtype: torch.dtype) -> None:
    g = gen(18)
    for aug, x in ((ImageAugment(), images()), (SignalAugment(noise_std=0.5), signals())):
        out, params = aug(x.to(dtype), g)
        assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
        assert params.crop.dtype == torch.float32
    for mode in ("mixup", "cutmix"):
        out, _ = Mixup(mode=mode)(images().to(dtype), g)
        assert out.dtype == dtype
