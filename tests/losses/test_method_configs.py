"""Every shipped method recipe and every cell of the benchmark grid builds and takes a step.

Models are randomly initialised and the inputs random, so this checks layer names, shapes
and adapters in seconds, long before a real run would find a mistake.
"""

from pathlib import Path

import pytest
import torch
import yaml

from kdforge import Batch, Distiller
from kdforge.api import build_losses
from kdforge.config import load_config, parse_config
from kdforge.jobs.bench_grid import NotApplicable, resolve_layers
from kdforge.models import create_model

ROOT = Path(__file__).parents[2]
SHAPES = {"mnist1d": (10, (1, 40)), "digits": (10, (1, 8, 8))}
MNIST1D_TEACHER = {"name": "cnn1d", "channels": [64, 128, 128]}  # configs/mnist1d/teacher.yaml


def one_step(teacher_cfg: dict, student_cfg: dict, losses, data: str) -> None:
    k, shape = SHAPES[data]
    torch.manual_seed(0)
    t_opts = {key: v for key, v in teacher_cfg.items() if key != "name"}
    s_opts = {key: v for key, v in student_cfg.items() if key not in ("name", "weights")}
    teacher = create_model(teacher_cfg["name"], k, shape, **t_opts)
    student = create_model(student_cfg["name"], k, shape, **s_opts)
    terms = build_losses(losses)
    for term in terms:
        term.bind_dataset_size(64)
    distiller = Distiller(student, teacher, terms)
    batch = Batch(torch.randn(8, *shape), torch.randint(0, k, (8,)), index=torch.arange(8))
    distiller.prepare(batch)
    distiller.progress = 10.0  # past warm-ups and init stages of every recipe
    out = distiller.step(batch)
    assert torch.isfinite(out.loss), out.parts
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


METHOD_CONFIGS = sorted((ROOT / "configs" / "methods").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=[p.stem for p in METHOD_CONFIGS])
def test_method_recipe_builds_and_steps(path):
    cfg = load_config(path)
    assert cfg.data.name == "mnist1d"
    assert cfg.teachers[0].run == str(ROOT / "runs" / "mnist1d-teacher")  # next to configs/
    one_step(MNIST1D_TEACHER, {"name": cfg.student.name, **cfg.student.options}, cfg.losses,
             "mnist1d")


GRID = yaml.safe_load((ROOT / "benchmarks" / "grid.yaml").read_text())
CELLS = [(p, m) for p in GRID["pairs"] for m in GRID["methods"]]


@pytest.mark.parametrize(("pair", "method"), CELLS, ids=[f"{p}-{m}" for p, m in CELLS])
def test_grid_cell_builds_and_steps(pair, method):
    spec = GRID["pairs"][pair]
    try:
        losses = resolve_layers(GRID["methods"][method], spec.get("layers", {}))
    except NotApplicable:
        pytest.skip(f"{method} is not applicable to {pair}")
    cfg = parse_config({"data": spec["data"], "student": spec["student"], "losses": losses})
    one_step(spec["teacher"], spec["student"], cfg.losses, spec["data"]["name"])
