import pytest

from kdforge.config import load_config, parse_config
from kdforge.core.errors import ConfigError

BASE = {"data": {"name": "digits"}, "student": {"name": "mlp"}}


def test_overrides_set_nested_values_and_list_items():
    cfg = parse_config(
        {**BASE, "losses": [{"name": "ce"}, {"name": "kd", "T": 4}]},
        ["train.epochs=7", "losses.1.T=2.5", "optim.name=adamw", "student.hidden=[8, 8]"],
    )
    assert cfg.train.epochs == 7 and cfg.optim.name == "adamw"
    assert cfg.losses[1].options == {"T": 2.5}
    assert cfg.student.options == {"hidden": [8, 8]}


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_config(BASE, ["train.epoch=3"])
    msg = str(err.value)
    assert "train.epoch: unknown key" in msg and "epochs" in msg


def test_bad_value_names_allowed_values():
    from kdforge.api import check_names

    # optimizers and schedules are registries (kdforge list optimizers): checked by name
    # before anything is built, with the closest valid names
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'.*'adam'"):
        check_names(parse_config(BASE, ["optim.name=adamx"]))
    with pytest.raises(ConfigError, match="unknown schedule 'cosin'.*'cosine'"):
        check_names(parse_config(BASE, ["schedule.name=cosin"]))
    with pytest.raises(ConfigError, match="train.precision"):
        parse_config(BASE, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="data.val_fraction"):
        parse_config(BASE, ["data.val_fraction=1.5"])


def test_missing_section_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="student: required key is missing"):
        parse_config({"data": {"name": "digits"}})
    with pytest.raises(ConfigError, match="key=value"):
        parse_config(BASE, ["train.epochs"])
    with pytest.raises(ConfigError, match="out of range"):
        parse_config({**BASE, "losses": [{"name": "ce"}]}, ["losses.5.weight=1"])


def test_teacher_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of .run."):
        parse_config({**BASE, "teacher": {"weights": "x.safetensors"}})
    cfg = parse_config({**BASE, "teacher": [{"run": "a"}, {"run": "b"}],
                        "ensemble": "mean_logits"})
    assert [t.run for t in cfg.teachers] == ["a", "b"]


def test_yaml_roundtrip_and_file_errors(tmp_path):
    cfg = parse_config({**BASE, "losses": [{"name": "kd", "weight": 0.9, "T": 4}]})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path, relative_to_file=False) == cfg
    # a relative output_dir in a file is relative to the file (kdforge.config_paths)
    assert load_config(path).output_dir == str(tmp_path / cfg.output_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_shipped_config_validates():
    from pathlib import Path

    from kdforge.compress.config import CompressConfig
    from kdforge.compress.stages import build_stage
    from kdforge.config import SoftLabelConfig

    kinds = {"soft_labels": SoftLabelConfig, "compress": CompressConfig}
    configs = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml"))
    assert configs, "configs/ holds the documented recipes"
    assert any(p.parent.name == "compress" for p in configs)
    for path in configs:
        cfg = load_config(path, kind=kinds.get(path.parent.name))
        if isinstance(cfg, CompressConfig):  # every stage and its options exist
            for stage in cfg.stages:
                build_stage(stage.name, stage.options)
