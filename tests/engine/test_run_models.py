"""Runs hold any model: a pruned network (a shrunk layer and a torch.nn.utils.prune mask)
trained by a run is saved safely, reloaded in a new process, evaluated, and teaches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from kdforge import CE, KD, Distiller, api
from kdforge.config import OptimConfig, TrainConfig, parse_config
from kdforge.core.errors import CheckpointError
from kdforge.engine.trainer import Trainer
from kdforge.models.runs import load_run_model, rebuild, save_run_model
from tests.conftest import synthetic_config

ROOT = Path(__file__).resolve().parents[2]


def shrink_hidden(mlp: nn.Module, keep: int) -> nn.Module:
    """Structured pruning by hand: keep the ``keep`` hidden units of largest weight norm."""
    first, fc = mlp.blocks[0][0], mlp.fc
    order = first.weight.norm(dim=1).argsort(descending=True)[:keep].sort().values
    new_first = nn.Linear(first.in_features, keep)
    new_fc = nn.Linear(keep, fc.out_features)
    with torch.no_grad():
        new_first.weight.copy_(first.weight[order])
        new_first.bias.copy_(first.bias[order])
        new_fc.weight.copy_(fc.weight[:, order])
        new_fc.bias.copy_(fc.bias)
    mlp.blocks[0][0], mlp.fc = new_first, new_fc
    return mlp


def test_pruned_model_saved_by_a_run_reloads_in_a_new_process_and_teaches(tmp_path):
    base = synthetic_config(tmp_path, name="teacher", student={"name": "mlp", "hidden": [16]},
                            train={"epochs": 2})
    original = api.train(parse_config(base), verbose=False)
    model = shrink_hidden(load_run_model(original.run_dir), keep=6)
    prune.l1_unstructured(model.fc, "weight", amount=0.5)  # a real mask, kept as such

    # fine-tune the pruned network with KD from the original, in a run directory
    run_dir = tmp_path / "runs" / "pruned"
    run_dir.mkdir(parents=True)
    shutil.copy(original.run_dir / "config.yaml", run_dir / "config.yaml")
    data = api.build_data(parse_config(base))
    step = Distiller(model, load_run_model(original.run_dir), [CE(weight=0.5), KD(weight=0.5)])
    Trainer(step, data.train, data.val, num_classes=4, batch_size=32,
            optim=OptimConfig(lr=0.01), train=TrainConfig(epochs=1, device="cpu"),
            run_dir=run_dir, verbose=False).fit()
    save_run_model(run_dir, model, name="mlp", options={"hidden": [16]}, num_classes=4,
                   input_shape=data.splits.input_shape)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["layers"] == {
        "blocks.0.0": {"type": "Linear", "args": {"in_features": 64, "out_features": 6,
                                                  "bias": True}},
        "fc": {"type": "Linear", "args": {"in_features": 6, "out_features": 4, "bias": True}}}
    assert meta["pruned"] == {"fc": ["weight"]}

    x = data.test[0]["input"].unsqueeze(0).repeat(3, *[1] * data.test[0]["input"].dim())
    model.eval()
    expected = model(x).detach()
    torch.save(x, tmp_path / "x.pt")  # a tensor the test itself wrote (not a user file)
    script = (
        "import sys, torch; from kdforge.models.runs import load_run_model;"
        f"m = load_run_model({str(run_dir)!r}).eval();"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True);"
        "print(repr(m(x).detach().tolist()));"
        "print(float((m.fc.weight == 0).float().mean()))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    logits, zero_share = proc.stdout.strip().splitlines()
    assert torch.equal(torch.tensor(eval(logits)), expected)  # noqa: S307 (our own output)
    assert float(zero_share) == pytest.approx(0.5)  # the mask survived the round trip

    # evaluated by the CLI in a new process, and used as a teacher by a new run
    cli = [sys.executable, "-m", "kdforge.cli"]
    ev = subprocess.run([*cli, "evaluate", str(run_dir)], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert 0.0 <= json.loads(ev.stdout)["accuracy"] <= 1.0
    student_cfg = synthetic_config(tmp_path, name="from-pruned", train={"epochs": 1},
                                   teacher={"run": str(run_dir)},
                                   losses=[{"name": "kd", "weight": 1.0}])
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student_cfg))
    run = subprocess.run([*cli, "distill", str(tmp_path / "student.yaml"), "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert run.returncode == 0, run.stderr
    summary = api.load_run_summary(tmp_path / "runs" / "from-pruned")
    assert summary["teacher_params"] == sum(p.numel() for p in model.parameters())


def test_a_description_naming_an_unknown_layer_type_is_refused(tmp_path):
    meta = {"name": "mlp", "options": {"hidden": [4]}, "num_classes": 2, "input_shape": [3],
            "layers": {"fc": {"type": "os.system", "args": {"command": "echo hi"}}}}
    with pytest.raises(CheckpointError, match="cannot be built"):
        rebuild(meta)
    meta["layers"] = {"nothere": {"type": "Identity", "args": {}}}
    with pytest.raises(CheckpointError, match="does not have"):
        rebuild(meta)


def test_an_undescribable_layer_is_refused_when_saving(tmp_path):
    model = rebuild({"name": "mlp", "options": {"hidden": [4]}, "num_classes": 2,
                     "input_shape": [3]})
    model.fc = nn.Bilinear(4, 4, 2)
    with pytest.raises(CheckpointError, match="Bilinear"):
        save_run_model(tmp_path, model, name="mlp", options={"hidden": [4]}, num_classes=2,
                       input_shape=(3,))
