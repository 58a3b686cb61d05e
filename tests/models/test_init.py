"""student.init: a model started from another run's weights where they fit."""

import pytest
import torch
from safetensors.torch import load_file

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import CheckpointError
from kdforge.models import create_model
from kdforge.models.init import init_from_run
from tests.conftest import synthetic_config


@pytest.fixture
def run(tmp_path):
    cfg = synthetic_config(tmp_path, name="source", student={"name": "mlp", "hidden": [8]})
    return api.train(parse_config(cfg), verbose=False).run_dir


def test_matching_tensors_are_copied_and_a_grown_head_keeps_its_rows(run):
    source = load_file(run / "model.safetensors")
    model = create_model("mlp", 6, (1, 8, 8), hidden=[8])  # 4 classes -> 6
    fresh = model.fc.weight.detach().clone()
    report = init_from_run(model, run)
    assert set(report.rows) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.fc.weight[:4], source["fc.weight"])
    assert torch.equal(model.fc.weight[4:], fresh[4:])  # the new rows keep their fresh values
    for name in report.copied:
        assert torch.equal(model.state_dict()[name], source[name])


def test_another_architecture_is_refused(run):
    with pytest.raises(CheckpointError, match="no weight"):
        init_from_run(create_model("cnn1d", 4, (1, 64)), run)


def test_student_init_in_a_config(tmp_path, run):
    cfg = parse_config(synthetic_config(tmp_path, name="started", train={"epochs": 1},
                                        student={"name": "mlp", "hidden": [8],
                                                 "init": str(run)}))
    data = api.build_data(cfg)
    step = api.build_distiller(cfg, data)
    source = load_file(run / "model.safetensors")
    for key, value in step.student.state_dict().items():
        assert torch.equal(value, source[key]), key
