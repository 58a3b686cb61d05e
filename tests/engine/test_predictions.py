"""``predictions.safetensors``: the test logits of student and teacher, capped, main rank."""

from __future__ import annotations

import torch
from torch import nn

from kdforge.engine.predictions import collect_predictions, write_predictions
from kdforge.report.runs import read_predictions


class Pairs(torch.utils.data.Dataset):
    classes = ["a", "b", "c"]

    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_collect_matches_the_models_and_caps():
    data = Pairs(10)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    out = collect_predictions(student, data, teacher=teacher, batch_size=4, max_samples=7)
    assert out["student"].dtype == torch.float16 and out["targets"].dtype == torch.int64
    assert out["student"].shape == (7, 3) and out["targets"].tolist() == data.y[:7].tolist()
    with torch.no_grad():
        assert torch.allclose(out["student"].float(), student(data.x[:7]), atol=1e-2)
        assert torch.allclose(out["teacher"].float(), teacher(data.x[:7]), atol=1e-2)
    assert "teacher" not in collect_predictions(student, data)


class FakeTrainer:
    def __init__(self, main: bool) -> None:
        self.env = type("Env", (), {"is_main": main})()
        self.train_step = type("Step", (), {"eval_module": lambda s: nn.Linear(5, 3)})()
        self.eval_teacher, self.device, self.eval_batch_size = None, torch.device("cpu"), 4
        self.autocast_dtype = None


def test_written_by_the_main_process_only(tmp_path):
    data = Pairs(6)
    assert write_predictions(FakeTrainer(main=False), data, tmp_path) is None
    assert not list(tmp_path.iterdir())
    path = write_predictions(FakeTrainer(main=True), data, tmp_path)
    preds = read_predictions(tmp_path)
    assert path.name == "predictions.safetensors" and preds["classes"] == ["a", "b", "c"]
    assert preds["student"].shape == (6, 3) and "teacher" not in preds
