"""The real stages in the pipeline: structured and unstructured pruning, int8 on the
onnxruntime route, ONNX export; what each writes loads back without unpickling."""

import json

import pytest
import torch

from kdforge import api
from kdforge.compress import pipeline
from kdforge.compress.config import CompressConfig
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.models.runs import load_run_model
from tests.conftest import synthetic_config

pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    cfg = synthetic_config(root, name="cnn", student={"name": "cnn1d", "channels": [16, 32]},
                           data={"input_shape": [1, 32], "noise": 3.0, "num_train": 192},
                           train={"epochs": 4}, optim={"name": "adamw", "lr": 0.01})
    return api.train(parse_config(cfg), verbose=False).run_dir


def config(tmp_path, run, stages, chains=None):
    return parse_config({
        "name": "c", "output_dir": str(tmp_path), "run": str(run), "stages": stages,
        "finetune": {"epochs": 1, "device": "cpu"},
        "chains": chains or {"none": [], "kd": [{"name": "kd", "T": 2}]},
        "latency": {"batches": [1, 8], "warmup": 1, "repeats": 2, "rounds": 1}},
        kind=CompressConfig)


def test_prune_int8_onnx_pipeline_records_and_files(tmp_path, cnn_run):
    stages = [{"name": "prune", "method": "structured", "params_ratio": 0.6},
              {"name": "int8", "route": "onnxruntime"}, {"name": "onnx", "finetune": False}]
    out = pipeline.compress(config(tmp_path, cnn_run, stages), verbose=False)
    original, prune, int8, onnx = out["runs"]
    assert [r["stage"] for r in out["runs"]] == ["original", "prune", "int8", "onnx"]
    assert prune["params"] <= 0.6 * original["params"]
    assert prune["method"] == "structured"
    assert int8["route"] == "onnxruntime" and int8["file_bytes"] > 0
    assert onnx["agreement_with_pytorch"] >= 99.5
    for r in out["runs"]:
        assert 0 <= r["kd_accuracy"] <= 100 and r["latency_ms_b8"] > 0
    root = tmp_path / "c"
    # the pruned model is a run directory: it reloads (no pickle) and predicts as measured
    pruned = load_run_model(root / "kd" / "prune").eval()
    facts = json.loads((root / "kd" / "prune" / "stage.json").read_text())
    assert sum(p.numel() for p in pruned.parameters()) == facts["params"]
    assert (root / "kd" / "int8" / "quantized.json").is_file()
    assert (root / "kd" / "onnx" / "model.onnx").is_file()
    suffixes = {p.suffix for p in root.rglob("*") if p.is_file()}
    assert not suffixes & {".pt", ".pth", ".pkl", ".pickle"}
    # a second run reads every stage back
    again = pipeline.compress(config(tmp_path, cnn_run, stages), resume=True, verbose=False)
    assert [r["kd_accuracy"] for r in again["runs"]] == [r["kd_accuracy"] for r in out["runs"]]


def test_unstructured_pruning_keeps_its_zeros_through_the_fine_tune(tmp_path, cnn_run):
    stages = [{"name": "prune", "method": "unstructured", "amount": 0.7}]
    out = pipeline.compress(config(tmp_path, cnn_run, stages), verbose=False)
    prune = out["runs"][1]
    assert prune["sparsity"] >= 0.69  # after a KD fine-tune: the masks held
    assert prune["params"] == out["runs"][0]["params"]  # dense tensors, same count
    model = load_run_model(tmp_path / "c" / "kd" / "prune")
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in model.named_parameters())
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules()
                if isinstance(m, torch.nn.Conv1d))
    assert zeros > 0


def test_stage_options_are_checked_before_anything_runs(tmp_path, cnn_run):
    with pytest.raises(ConfigError, match="params_ratio"):
        pipeline.compress(config(tmp_path, cnn_run, [{"name": "prune"}]), verbose=False)
    with pytest.raises(ConfigError, match="amount"):
        pipeline.compress(config(tmp_path, cnn_run, [{"name": "prune",
                                                      "method": "unstructured"}]),
                          verbose=False)
    assert not (tmp_path / "c").exists()
