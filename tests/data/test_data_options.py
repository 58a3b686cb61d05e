"""Data set options: listed with their defaults, documented, type-checked, renamed clearly."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml

from kdforge import api, listing
from kdforge.cli import main
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.datasets import DATASETS, describe_options, load_dataset, option_defaults
from kdforge.data.datasets.options import REQUIRED
from tests.conftest import synthetic_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_kdforge_list_datasets_shows_every_option_with_its_default(capsys):
    rows = {name: summary for name, _, summary in listing.list_registered("datasets")}
    assert set(rows) == set(DATASETS.names()) and "arrays" in rows
    assert "num_samples=5000, draw_seed=42, cache=True" in rows["mnist1d"]
    assert "root (required)" in rows["image_folder"] and "val_root=None" in rows["image_folder"]
    assert "image_size=8" in rows["digits"]
    assert "train (required), test (required), val=None, input_key='x'" in rows["arrays"]
    for name in DATASETS.names():
        assert describe_options(DATASETS.get(name)) in rows[name]
    assert main(["list", "datasets"]) == 0
    assert "draw_seed=42" in capsys.readouterr().out


def test_every_option_is_documented_in_its_loader_and_in_docs_data_md():
    docs = DOCS.read_text()
    for name in DATASETS.names():
        factory = DATASETS.get(name)
        doc = inspect.getdoc(factory) or ""
        section = docs.split(f"### `{name}`", 1)
        assert len(section) == 2, f"docs/data.md has no section for {name}"
        section = section[1].split("\n### ", 1)[0]
        for option, default in option_defaults(factory).items():
            assert option in doc, f"{name}'s docstring does not mention {option}"
            assert f"`{option}`" in section, f"docs/data.md does not list {name}.{option}"
            shown = "required" if default is REQUIRED else json.dumps(
                list(default) if isinstance(default, tuple) else default).strip('"')
            row = next(line for line in section.splitlines() if f"| `{option}`" in line)
            assert shown.lower() in row.lower(), f"docs/data.md: {name}.{option} default"


@pytest.mark.parametrize("name, options", [("mnist1d", {"seed": 3, "num_samples": 100}),
                                           ("synthetic", {"seed": 1})])
def test_the_generators_old_seed_option_says_it_was_renamed(name, options):
    with pytest.raises(ConfigError, match=r"option 'seed' was renamed 'draw_seed'.*top-level "
                                          r"'seed'.*write data\.draw_seed"):
        load_dataset(name, **options)
    cfg = parse_config(synthetic_config(Path("."), data={"name": name, **options}))
    with pytest.raises(ConfigError, match="renamed 'draw_seed'"):
        api.build_data(cfg)


def test_draw_seed_draws_other_samples_and_the_run_seed_does_not(tmp_path):
    a = load_dataset("synthetic", draw_seed=1).train
    b = load_dataset("synthetic", draw_seed=2).train
    assert not torch.equal(a.inputs, b.inputs)
    cfg = synthetic_config(tmp_path, data={"draw_seed": 1})
    one = api.build_data(parse_config({**cfg, "seed": 1}))
    two = api.build_data(parse_config({**cfg, "seed": 2}))
    assert torch.equal(one.train.__getitems__(range(8))["input"],
                       two.train.__getitems__(range(8))["input"])


def test_the_mnist1d_cache_file_keeps_its_name_after_the_rename(kdforge_cache):
    load_dataset("mnist1d", num_samples=100, draw_seed=3)
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    key_src = json.dumps({"num_samples": 100, "seed": 3, "train_split": 0.8,
                          "mnist1d": version}, sort_keys=True)  # as before the rename
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    assert (kdforge_cache / "mnist1d" / f"mnist1d_n100_s3_{key}.npz").is_file()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("image_folder", {"root": None}, r"'root' must be a string or a path, got None"),
        ("image_folder", {"root": 5}, r"'root' must be a string or a path, got 5 \(int\)"),
        ("image_folder", {"root": "x", "test_root": 3}, r"'test_root' must be .* or null"),
        ("image_folder", {"root": "x", "split_seed": None}, r"'split_seed' must be an integer"),
        ("cifar10", {"root": None}, "'root' must be a string or a path"),
        ("cifar100", {"root": ["a"]}, "'root' must be a string or a path"),
        ("digits", {"split_seed": None}, "'split_seed' must be an integer.*default \\(0\\)"),
        ("digits", {"image_size": "big"}, "'image_size' must be an integer"),
        ("synthetic", {"draw_seed": None}, "'draw_seed' must be an integer"),
        ("synthetic", {"input_shape": [1, "a"]}, "'input_shape' must be"),
        ("mnist1d", {"cache": "no"}, "'cache' must be true or false"),
        ("arrays", {"train": None, "test": "t.npz"}, "'train' must be"),
        ("arrays", {"train": "a.npz", "test": "t.npz", "num_classes": 2.5}, "'num_classes'"),
    ],
)
def test_none_and_wrongly_typed_options_are_one_line_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(name, **options)
    assert "\n" not in str(err.value) and f"dataset {name!r}" in str(err.value)


def test_set_data_root_null_is_one_line_on_the_command_line(tmp_path, capsys, image_writer):
    for k in range(4):
        image_writer(tmp_path / "img" / ("a" if k % 2 else "b") / f"{k}.png", 10 * k)
    cfg = synthetic_config(tmp_path, data={"name": "image_folder", "root": str(tmp_path / "img"),
                                           "test_fraction": 0.5, "val_fraction": 0.0})
    for key in ("num_train", "num_test", "num_classes"):
        del cfg["data"][key]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for override in ("data.root=null", "data.root=7", "data.image_size=[8, x]"):
        assert main(["train", str(path), "--quiet", "--set", override]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kdforge: error: ") and "Traceback" not in err
        assert err.count("\n") == 1, err


def test_digits_image_size_resizes_bilinearly():
    small, big = load_dataset("digits"), load_dataset("digits", image_size=16)
    assert big.input_shape == (1, 16, 16) and big.train.input_shape == (1, 16, 16)
    assert torch.equal(small.train.targets, big.train.targets)  # the same split
    x8 = small.train.__getitems__(range(5))["input"]
    x16 = big.train.__getitems__(range(5))["input"]
    expected = torch.nn.functional.interpolate(x8, size=(16, 16), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(x16, expected)
    assert float(x16.min()) >= 0 and float(x16.max()) <= 1
    assert load_dataset("digits", image_size=4).input_shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="image_size must be at least 2"):
        load_dataset("digits", image_size=1)
