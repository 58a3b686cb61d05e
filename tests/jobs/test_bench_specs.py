"""The grid and recipes specs: the shipped files validate; bad keys and values are named."""

from pathlib import Path

import pytest
import yaml

from kdforge.core.errors import ConfigError
from kdforge.jobs.bench_grid import GridSpec, load_grid
from kdforge.jobs.bench_recipes import RecipesSpec, load_recipes

ROOT = Path(__file__).parents[2]
PAIR = {"data": {"name": "synthetic"}, "teacher": {"name": "mlp"}, "student": {"name": "mlp"},
        "epochs": 2, "layers": {"hint": {"student": "blocks.0", "teacher": ["blocks.0"]}}}
GRID = {"pairs": {"tiny": PAIR}, "methods": {"baseline": [{"name": "ce"}]}}
RECIPES = {"teacher": "t.yaml", "settings": {"fixed": "f.yaml"}, "epochs": [1, 2]}


def write(tmp_path: Path, spec) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def with_key(spec: dict, dotted: str, value) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(spec))  # a deep copy
    *parents, last = dotted.split(".")
    node = spec
    for part in parents:
        node = node[part]
    node[last] = value
    return spec


def test_shipped_specs_validate():
    grid = load_grid(ROOT / "benchmarks" / "grid.yaml")
    assert isinstance(grid, GridSpec) and "mnist1d_cnn" in grid.pairs and "kd" in grid.methods
    assert grid.pairs["digits_resnet"].layer_names()["hint"] == {"student": "layer2",
                                                                 "teacher": "layer2"}
    recipes = load_recipes(ROOT / "benchmarks" / "recipes.yaml")
    assert isinstance(recipes, RecipesSpec) and "consistent" in recipes.settings


def test_grid_defaults_leave_absent_sections_unset(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    assert grid.seeds == [0] and grid.output_dir == "runs/grid" and grid.device == "auto"
    assert grid.optim is None and grid.schedule is None  # part of the teacher run's name


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sedes", [0], "sedes: unknown key; allowed keys here: seeds, output_dir"),
    ("pairs.tiny.epoch", 3, "pairs.tiny.epoch: unknown key; allowed keys here: data, teacher"),
    ("pairs.tiny.layers.hint.students", "x", "pairs.tiny.layers.hint.students: unknown key; "
                                              "allowed keys here: student, teacher"),
    ("pairs.tiny.epochs", 0, "pairs.tiny.epochs: Input should be greater than 0"),
    ("pairs.tiny.teacher", {"hidden": [8]}, "pairs.tiny.teacher: Value error, must name a model"),
    ("seeds", [], "seeds: List should have at least 1 item"),
    ("methods", {}, "methods: Dictionary should have at least 1 item"),
    ("optim", None, "optim: Value error, must be a mapping of options"),
    ("seeds", "zero", "seeds: Input should be a valid list"),
])
def test_grid_errors_name_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match="invalid grid file") as err:
        load_grid(write(tmp_path, with_key(GRID, key, value)))
    assert message in str(err.value)


def test_grid_missing_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match="pairs: required key is missing"):
        load_grid(write(tmp_path, {"methods": GRID["methods"]}))
    no_epochs = {k: v for k, v in PAIR.items() if k != "epochs"}
    with pytest.raises(ConfigError, match="pairs.tiny.epochs: required key is missing"):
        load_grid(write(tmp_path, {**GRID, "pairs": {"tiny": no_epochs}}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_grid(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="holds a mapping"):
        load_grid(tmp_path / "list.yaml")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epoch", [1], "epoch: unknown key; allowed keys here: teacher, settings, epochs"),
    ("epochs", [0, 10], "epochs.0: Input should be greater than 0"),
    ("epochs", [], "epochs: List should have at least 1 item"),
    ("settings", {}, "settings: Dictionary should have at least 1 item"),
    ("settings", {"fixed": {"a": 1}}, "settings.fixed: Input should be a valid string"),
])
def test_recipes_errors_name_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match="invalid recipes file") as err:
        load_recipes(write(tmp_path, with_key(RECIPES, key, value)))
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="teacher: required key is missing"):
        load_recipes(write(tmp_path, {k: v for k, v in RECIPES.items() if k != "teacher"}))
