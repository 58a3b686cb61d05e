"""Choosing an augmentation by input shape; option errors."""

from __future__ import annotations

import pytest

from kdforge.core.errors import ConfigError
from kdforge.data.augment import (
    ImageAugment,
    Mixup,
    SignalAugment,
    make_augment,
)


def test_make_augment_picks_by_rank_and_checks_options() -> None:
    image = make_augment((3, 32, 32), scale=(0.2, 1.0), flip=0.0)
    assert isinstance(image, ImageAugment) and image.scale == (0.2, 1.0) and image.flip == 0.0
    signal = make_augment((1, 40), noise_std=0.1)
    assert isinstance(signal, SignalAugment) and signal.noise_std == 0.1
    assert image.config()["scale"] == [0.2, 1.0] and "SignalAugment(" in repr(signal)
    with pytest.raises(ConfigError, match=r"\(1, 2, 3, 4\).*\(C, H, W\).*\(C, L\)"):
        make_augment((1, 2, 3, 4))
    with pytest.raises(ConfigError, match=r"\(40,\)"):
        make_augment((40,))
    with pytest.raises(ConfigError, match="'noise_std'.*allowed options: scale, ratio, flip"):
        make_augment((3, 8, 8), noise_std=0.1)
    with pytest.raises(ConfigError, match="'ratio'.*allowed options: scale, flip, noise_std"):
        make_augment((1, 40), ratio=(0.5, 2.0))


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: ImageAugment(scale=(0.0, 1.0)), r"scale.*0 < lo <= hi <= 1.*\(0\.0, 1\.0\)"),
        (lambda: ImageAugment(scale=(0.6, 0.2)), r"scale.*0 < lo <= hi <= 1.*\(0\.6, 0\.2\)"),
        (lambda: SignalAugment(scale=(0.5, 1.5)), r"scale.*0 < lo <= hi <= 1.*1\.5"),
        (lambda: ImageAugment(scale=0.5), r"scale must be a pair.*0\.5"),
        (lambda: ImageAugment(ratio=(0.0, 1.0)), r"ratio.*0 < lo <= hi.*\(0\.0, 1\.0\)"),
        (lambda: ImageAugment(ratio=(2.0, 1.0)), r"ratio.*0 < lo <= hi.*\(2\.0, 1\.0\)"),
        (lambda: ImageAugment(flip=1.5), r"flip.*\[0, 1\].*1\.5"),
        (lambda: SignalAugment(flip=-0.1), r"flip.*\[0, 1\].*-0\.1"),
        (lambda: SignalAugment(noise_std=-1.0), r"noise_std.*>= 0.*-1\.0"),
        (lambda: ImageAugment(center_crop=0.0), r"center_crop.*\(0, 1\].*0\.0"),
        (lambda: Mixup(alpha=0.0), r"alpha.*> 0.*0\.0"),
        (lambda: Mixup(alpha=-1.0), r"alpha.*> 0.*-1\.0"),
        (lambda: Mixup(mode="mixer"), r"'mixer'.*'mixup', 'cutmix'"),
    ],
)
def test_bad_options_raise_config_error(build, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build()
