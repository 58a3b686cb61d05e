"""Every registered scheme has a config in configs/schemes/, and every config is valid."""

from pathlib import Path

import pytest

from kdforge.config import load_config
from kdforge.schemes import SCHEMES, build_scheme

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "schemes").glob("*.yaml"))
#: Registered names that are parts of another scheme, run by it (not configs of their own).
PARTS = {"lwf-stage": "lwf", "deepinversion-transfer": "deepinversion",
         "transfer_set-stage": "transfer_set"}


def stem_fits(stem: str, scheme: str) -> bool:
    """A config is named after its scheme: ``NAME.yaml`` or ``NAME-SUFFIX.yaml`` (a variant,
    e.g. ``nas-2d.yaml`` for ``nas``)."""
    return stem == scheme or (stem.startswith(scheme + "-") and len(stem) > len(scheme) + 1)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_scheme_config_is_valid_and_its_options_are_accepted(path):
    cfg = load_config(path)
    assert cfg.scheme is not None and stem_fits(path.stem, cfg.scheme.name)
    scheme = build_scheme(cfg.scheme)
    assert scheme.name == cfg.scheme.name and scheme.name in SCHEMES.names()


def test_a_config_stem_is_its_scheme_name_or_a_suffixed_variant():
    assert stem_fits("nas", "nas") and stem_fits("nas-2d", "nas")
    assert not stem_fits("nas2d", "nas") and not stem_fits("nas-", "nas")
    assert not stem_fits("ban", "nas") and not stem_fits("na", "nas")


def test_every_scheme_has_a_config():
    names = {p.stem for p in CONFIGS}
    for name in SCHEMES.names():
        assert name in names or PARTS.get(name) in names, name
        assert SCHEMES.entry(name).source, f"{name} names no paper"
