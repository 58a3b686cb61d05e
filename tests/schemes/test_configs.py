"""Every registered scheme has a config in configs/schemes/, and every config is valid."""

from pathlib import Path

import pytest

from kdforge.config import load_config
from kdforge.schemes import SCHEMES, build_scheme

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "schemes").glob("*.yaml"))
#: Registered names that are parts of another scheme, run by it (not configs of their own).
PARTS = {"lwf-stage": "lwf", "deepinversion-transfer": "deepinversion",
         "transfer_set-stage": "transfer_set"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_scheme_config_is_valid_and_its_options_are_accepted(path):
    cfg = load_config(path)
    assert cfg.scheme is not None and cfg.scheme.name == path.stem
    scheme = build_scheme(cfg.scheme)
    assert scheme.name == path.stem


def test_every_scheme_has_a_config():
    names = {p.stem for p in CONFIGS}
    for name in SCHEMES.names():
        assert name in names or PARTS.get(name) in names, name
        assert SCHEMES.entry(name).source, f"{name} names no paper"
