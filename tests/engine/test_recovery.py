"""A NaN loss: stop naming the part and the step, keep the last good checkpoint, restart
from it with lower learning rates (train.on_nonfinite: restart, or --resume --lr-scale)."""

from __future__ import annotations

import json

import pytest
import torch

from kdforge import CE, Distiller, NonFiniteLossError, Trainer, api
from kdforge.cli import main
from kdforge.config import OptimConfig, ScheduleConfig, TrainConfig, parse_config
from kdforge.data import load_dataset
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.losses.base import LossTerm
from tests.conftest import TinyNet, synthetic_config


class NanOnce(LossTerm):
    """Zero, except NaN at the ``at``-th call while the learning rate is above ``above``
    (a divergence that a lower learning rate cures)."""

    name = "nan_once"
    needs_teacher = False

    def __init__(self, at: int, trainer_ref: list, above: float = 0.0) -> None:
        super().__init__(weight=1.0)
        self.at, self.calls, self.trainer_ref, self.above = at, 0, trainer_ref, above

    def forward(self, student, teacher, batch):
        self.calls += 1
        lr = self.trainer_ref[0].updater.lr() if self.trainer_ref else 1.0
        bad = self.calls >= self.at and lr > self.above
        return student.logits.sum() * (float("nan") if bad else 0.0)


def data():
    return load_dataset("synthetic", num_classes=4, num_train=64, num_test=32,
                        input_shape=(1, 8, 8))


def trainer_with(term_at: int, run_dir, above: float, **train) -> tuple[Trainer, list]:
    torch.manual_seed(0)
    ref: list = []
    d = data()
    distiller = Distiller(TinyNet(), None, [CE(), NanOnce(term_at, ref, above)])
    trainer = Trainer(distiller, d.train, d.test, num_classes=4, batch_size=16,
                      optim=OptimConfig(name="sgd", lr=0.1),
                      schedule=ScheduleConfig(name="constant"),
                      train=TrainConfig(epochs=4, device="cpu", log_every=1, **train),
                      run_dir=run_dir, verbose=False)
    ref.append(trainer)
    return trainer, ref


def test_stop_names_the_part_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, _ = trainer_with(10, tmp_path, above=0.0)  # 4 steps per epoch: epoch 3, step 2
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert "nan_once" in message and "epoch 3, step 2" in message
    assert "--lr-scale 0.5" in message and "on_nonfinite=restart" in message
    state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["modules"]["student"].values()
               if v.is_floating_point())


def test_restart_lowers_the_learning_rate_and_finishes(tmp_path):
    # NaN while lr > 0.06: the first restart (0.05) cures it
    trainer, _ = trainer_with(10, tmp_path, above=0.06, on_nonfinite="restart")
    history = trainer.fit()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[1]["lr"] == pytest.approx(0.1) and history[2]["lr"] == pytest.approx(0.05)
    assert trainer.lr_scale == pytest.approx(0.5)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")["lr_scale"] == 0.5


def test_restart_before_any_checkpoint_and_without_a_run_dir():
    trainer, _ = trainer_with(2, None, above=0.03, on_nonfinite="restart")
    history = trainer.fit()  # epoch 1 diverges twice: restarts from the initial state
    assert len(history) == 4 and trainer.lr_scale == pytest.approx(0.25)


def test_restart_gives_up_after_max_restarts(tmp_path):
    trainer, _ = trainer_with(10, tmp_path, above=0.0, on_nonfinite="restart", max_restarts=2)
    with pytest.raises(NonFiniteLossError, match="after 2 restarts"):
        trainer.fit()


def test_resume_with_lr_scale_from_the_cli(tmp_path, capsys):
    cfg = synthetic_config(tmp_path, train={"epochs": 3},
                           schedule={"name": "constant"})
    cut = parse_config({**cfg, "name": "cut"})

    class Stop(Exception):
        pass

    def stop(trainer, record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        api.train(cut, verbose=False, callbacks=[stop])
    run_dir = tmp_path / "runs" / "cut"
    assert main(["train", "--resume", str(run_dir), "--lr-scale", "0.5", "--quiet"]) == 0
    lrs = [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.05, 0.025, 0.025])
    assert main(["train", "cfg.yaml", "--lr-scale", "0.5"]) == 2
    assert "--lr-scale applies to a resumed run" in capsys.readouterr().err
