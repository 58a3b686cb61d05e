"""The training loop: frozen teacher, resume, schedules, NaN handling, determinism."""

import json

import pytest
import torch

from kdforge import CE, KD, Distiller, NonFiniteLossError, Trainer, api
from kdforge.config import ScheduleConfig, TrainConfig, parse_config
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.data import load_dataset
from kdforge.data.loaders import first_batch
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.optim import lr_factor
from kdforge.models import create_model
from tests.conftest import TinyNet, synthetic_config


def image_data():
    return load_dataset("synthetic", num_classes=4, num_train=64, num_test=32,
                        input_shape=(1, 8, 8))


def test_teacher_weights_and_bn_statistics_unchanged_by_distillation():
    data = image_data()
    teacher = TinyNet()
    teacher.train()
    for _ in range(3):  # give BN non-trivial running statistics
        teacher(torch.randn(16, 1, 8, 8) * 3 + 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(TinyNet(), teacher, [CE(weight=0.5), KD(weight=0.5)])
    Trainer(distiller, data.train, data.test, num_classes=4, batch_size=16,
            train=TrainConfig(epochs=1, device="cpu"), verbose=False).fit()
    after = teacher.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed"
    student_bn = distiller.student.bn.num_batches_tracked.item()
    assert student_bn == 4  # while the student's BN did update: 64 samples / 16


def test_resume_gives_same_final_weights(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, train={"epochs": 4},
                                        student={"name": "mlp", "hidden": [16], "dropout": 0.2}))
    full = api.train(cfg, verbose=False)
    full_weights = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]["student"]

    class Interrupt(Exception):
        pass

    def stop_after_two(trainer, record):
        if record["epoch"] == 2:
            raise Interrupt

    cut = cfg.model_copy(update={"name": "cut"})
    with pytest.raises(Interrupt):
        api.train(cut, verbose=False, callbacks=[stop_after_two])
    run_dir = tmp_path / "runs" / "cut"
    assert not (run_dir / "model.safetensors").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = api.resume(run_dir, verbose=False)
    resumed_weights = load_checkpoint(run_dir / "checkpoint.safetensors")["modules"]["student"]
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert resumed.summary["test"] == full.summary["test"]
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_existing_run_is_not_overwritten_by_accident(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, train={"epochs": 1}))
    api.train(cfg, verbose=False)
    with pytest.raises(ConfigError, match="--resume"):
        api.train(cfg, verbose=False)
    api.train(cfg, verbose=False, overwrite=True)


def test_resume_refuses_other_config_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        api.resume(tmp_path / "nothing", verbose=False)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = api.train(parse_config(synthetic_config(tmp_path, name="a")), verbose=False)
    b = api.train(parse_config(synthetic_config(tmp_path, name="b")), verbose=False)
    c = api.train(parse_config(synthetic_config(tmp_path, name="c", seed=1)), verbose=False)

    def weights(r):
        return load_checkpoint(r.run_dir / "checkpoint.safetensors")["modules"]["student"]

    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_nan_loss_raises_clear_error_and_keeps_checkpoint(tmp_path):
    from kdforge.losses.base import LossTerm

    class Exploding(LossTerm):
        name = "exploding"
        needs_teacher = False

        def forward(self, student, teacher, batch):
            return student.logits.sum() * float("nan")

    data = image_data()
    distiller = Distiller(TinyNet(), None, [CE(), Exploding()])
    trainer = Trainer(distiller, data.train, None, num_classes=4, batch_size=16,
                      train=TrainConfig(epochs=1, device="cpu", log_every=2),
                      run_dir=tmp_path, verbose=False)
    with pytest.raises(NonFiniteLossError, match="exploding") as err:
        trainer.fit()
    assert "grad_clip" in str(err.value)


def test_warmup_cosine_and_step_schedules():
    cos = ScheduleConfig(name="cosine", warmup_epochs=1)
    assert lr_factor(0, 10, 5, cos, 0.1) == pytest.approx(0.01)
    assert lr_factor(5, 10, 5, cos, 0.1) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, 10, 5, cos, 0.1) == pytest.approx(1.0)
    assert lr_factor(30, 10, 5, cos, 0.1) == pytest.approx(0.5)
    assert lr_factor(50, 10, 5, cos, 0.1) == pytest.approx(0.0, abs=1e-12)
    step = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    assert lr_factor(19, 10, 5, step, 0.1) == 1.0
    assert lr_factor(20, 10, 5, step, 0.1) == pytest.approx(0.1)
    assert lr_factor(45, 10, 5, step, 0.1) == pytest.approx(0.01)


def test_gradient_clipping_and_bf16_autocast_run_on_cpu(tmp_path):
    data = image_data()
    student = create_model("cnn2d", 4, (1, 8, 8))
    trainer = Trainer(Distiller(student), data.train, data.test, num_classes=4, batch_size=16,
                      train=TrainConfig(epochs=1, device="cpu", precision="bf16", grad_clip=1.0),
                      verbose=False)
    history = trainer.fit()
    assert 0.0 <= history[-1]["val/accuracy"] <= 1.0
    assert torch.isfinite(torch.tensor(history[-1]["train/loss"]))


def test_fp16_on_cpu_is_refused():
    data = image_data()
    with pytest.raises(ConfigError, match="bf16"):
        Trainer(Distiller(TinyNet()), data.train, num_classes=4,
                train=TrainConfig(device="cpu", precision="fp16"))


def test_tensorboard_events_are_written(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, train={"epochs": 1, "tensorboard": True}))
    result = api.train(cfg, verbose=False)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_adapters_built_on_the_first_batch_are_trained():
    from kdforge.losses.base import LossTerm

    class Hint(LossTerm):
        name = "hint"

        def __init__(self):
            super().__init__()
            self.regressor = None

        def student_features(self):
            return ["conv"]

        def teacher_features(self):
            return ["conv"]

        def setup(self, student, teacher, batch):
            s, t = student.feature("conv"), teacher.feature("conv")
            self.regressor = torch.nn.Conv2d(s.shape[1], t.shape[1], 1)

        def forward(self, student, teacher, batch):
            s = self.regressor(student.features["conv"])
            return (s - teacher.features["conv"]).pow(2).mean()

    data = image_data()
    term = Hint()
    distiller = Distiller(TinyNet(width=4), TinyNet(width=6), [CE(), term])
    distiller.prepare(first_batch(data.train, 8))
    regressor = term.regressor
    assert regressor is not None and regressor.out_channels == 6
    before = regressor.weight.detach().clone()
    trainer = Trainer(distiller, data.train, None, num_classes=4, batch_size=16,
                      train=TrainConfig(epochs=1, device="cpu"), verbose=False)
    trainer.fit()
    assert term.regressor is regressor  # built once, not rebuilt by the trainer
    assert any(p is regressor.weight for p in trainer.updater.optimizer().param_groups[0]["params"])
    assert not torch.equal(before, regressor.weight)


def test_trainer_sets_progress_and_pretrains_terms_once(tmp_path):
    from kdforge.losses.base import LossTerm

    class Recorder(LossTerm):
        name = "recorder"
        needs_pretraining = True

        def __init__(self):
            super().__init__(weight=0.0)
            self.pretrained_batches = 0
            self.progress_seen = []

        def pretrain(self, teacher_outputs):
            for out in teacher_outputs():
                assert not out.logits.requires_grad
                self.pretrained_batches += 1

        def forward(self, student, teacher, batch):
            return student.logits.sum() * 0

    data = image_data()  # 64 samples, batch 16: 4 steps per epoch
    term = Recorder()
    distiller = Distiller(TinyNet(), TinyNet(), [CE(), term])
    seen = []
    original = distiller.step

    def spy(batch, phase=None):
        seen.append(distiller.progress)
        return original(batch, phase)

    distiller.step = spy
    trainer = Trainer(distiller, data.train, None, num_classes=4, batch_size=16,
                      train=TrainConfig(epochs=2, device="cpu"), run_dir=tmp_path, verbose=False)
    trainer.fit()
    assert term.pretrained_batches == 4
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    Trainer(distiller, data.train, None, num_classes=4, batch_size=16,
            train=TrainConfig(epochs=2, device="cpu"), run_dir=tmp_path,
            verbose=False).fit(resume=True)
    assert term.pretrained_batches == 4  # not again on resume


def test_shampoo_optimizer_trains(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, optim={"name": "shampoo", "lr": 0.05},
                                        train={"epochs": 3}))
    history = api.train(cfg, verbose=False).summary
    records = [json.loads(x) for x in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert history["val"]["accuracy"] > 0.5


def test_a_run_resumed_after_its_last_epoch_keeps_its_history_and_time(tmp_path):
    """Interrupted between the last checkpoint and summary.json: the resume trains nothing,
    and its summary still has the validation metrics and the epochs' training time."""

    class Interrupt(Exception):
        pass

    def stop_at_the_end(trainer, record):
        if record["epoch"] == 2:
            raise Interrupt

    cfg = parse_config(synthetic_config(tmp_path, name="late", train={"epochs": 2}))
    with pytest.raises(Interrupt):
        api.train(cfg, verbose=False, callbacks=[stop_at_the_end])
    run_dir = tmp_path / "runs" / "late"
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = api.resume(run_dir, verbose=False)
    assert resumed.summary["val"]["accuracy"] == logged[-1]["val/accuracy"]
    assert resumed.summary["train_time_s"] >= sum(r["epoch_time_s"] for r in logged) > 0
