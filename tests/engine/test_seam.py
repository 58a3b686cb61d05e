"""The TrainStep seam through the real Trainer: several optimizer groups, a generator
source, a teacher with input gradients, step callbacks, safe checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge.config import OptimConfig, TrainConfig
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.core.outputs import Batch
from kdforge.core.step import OptimGroup, TrainStep
from kdforge.data.sources import GeneratorSource, noise_batches
from kdforge.engine.callbacks import Callback
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.trainer import Trainer
from kdforge.teachers.module import ModuleTeacher
from tests.engine.toy_steps import AdversarialStep, DataFreeStep, train_adversarial, vector_data

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.engine.toy_steps", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {**load_file(run_dir / "model.safetensors"),
            **{f"adv.{k}": v for k, v in load_file(run_dir / "model-adversary.safetensors").items()}}


def test_min_max_step_trains_both_groups_and_resumes_bit_identically_after_sigkill(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_adversarial(str(full), epochs=4)  # uninterrupted, in this process (one thread too)
    killed = _run(str(cut), "4", "kill:2")
    assert killed.returncode == -9  # SIGKILL: nothing ran after the epoch-2 checkpoint
    assert not (cut / "model.safetensors").exists()
    assert load_checkpoint(cut / "checkpoint.safetensors")["epoch"] == 2
    resumed = _run(str(cut), "4", "resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state = load_checkpoint(full / "checkpoint.safetensors")
    assert sorted(state["updater"]) == ["adversary", "student"]
    assert state["updater"]["adversary"]["optimizer"]["state"]  # adam moments were saved
    records = (cut / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 4 and '"train/adversary/ce"' in records[0]


def test_min_max_phases_update_their_own_group_only(tmp_path):
    step = AdversarialStep()
    before = {k: v.clone() for k, v in step.state_dict().items()}
    data = vector_data()
    trainer = Trainer(step, data.train, num_classes=4, batch_size=32,
                      train=TrainConfig(epochs=1, device="cpu"), verbose=False)
    trainer.fit()
    changed = {k for k, v in step.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(before)  # both modules moved
    # the adversary's own optimizer (adam, lr 1e-2) and the run's sgd for the student
    assert type(trainer.updater.optimizer("adversary")).__name__ == "Adam"
    assert type(trainer.updater.optimizer("student")).__name__ == "SGD"
    assert trainer.updater.optimizer("adversary").param_groups[0]["initial_lr"] == 1e-2
    assert trainer.history[0]["lr/adversary"] == 0.0  # each group follows its own cosine
    # the adversary maximised the student's loss: its phase's loss is minus the CE
    record = trainer.history[0]
    assert record["train/adversary/loss"] == pytest.approx(-record["train/adversary/ce"])


def _bn_teacher() -> nn.Module:
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    teacher.train()
    for _ in range(3):  # non-trivial running statistics
        teacher(torch.randn(32, 8) * 2 + 1)
    return teacher


def test_generator_source_and_input_gradient_teacher_keep_the_teacher_bit_identical():
    teacher = _bn_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    step = DataFreeStep(teacher)
    generator_before = [p.clone() for p in step.generator.parameters()]
    source = GeneratorSource(noise_batches(16, (6,)), steps_per_epoch=5)
    data = vector_data()
    trainer = Trainer(step, source, data.test, num_classes=4,
                      train=TrainConfig(epochs=2, device="cpu"), verbose=False)
    history = trainer.fit()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher {key} changed"
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(generator_before, step.generator.parameters(), strict=True))
    assert trainer.global_step == 10  # the declared steps per epoch, no data set behind it
    assert "val/agreement" in history[-1]  # evaluated against the step's teacher


def test_generator_source_is_seeded_per_epoch():
    source = GeneratorSource(noise_batches(4, (3,)), steps_per_epoch=2)
    from kdforge.core.source import SourceContext

    source.bind(SourceContext(torch.device("cpu")))
    first = [b.inputs for b in source.epoch(0, seed=11)]
    again = [b.inputs for b in source.epoch(0, seed=11)]
    other = [b.inputs for b in source.epoch(1, seed=12)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])
    probe = source.probe(4)
    assert probe.inputs.shape == (4, 3)
    assert torch.equal(next(iter(source.epoch(0, seed=11))).inputs, first[0])


def test_input_gradient_teacher_passes_gradients_to_its_input_only():
    teacher = _bn_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(5, 8, requires_grad=True)
    ModuleTeacher(teacher, gradients="input")(x).logits.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    y = torch.randn(5, 8, requires_grad=True)
    assert not ModuleTeacher(teacher)(y).logits.requires_grad  # the default keeps no graph
    with pytest.raises(ConfigError, match="PeerTeacher"):
        ModuleTeacher(teacher, gradients="peer")


class CountSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[int] = []

    def on_step(self, trainer, record) -> None:
        self.steps.append(record.global_step)
        assert set(record.results) == {"adversary", "student"}

    def on_epoch(self, trainer, record) -> None:
        self.epochs.append(record["epoch"])


def test_step_and_epoch_callbacks():
    counter = CountSteps()
    data = vector_data()
    Trainer(AdversarialStep(), data.train, num_classes=4, batch_size=32,
            train=TrainConfig(epochs=2, device="cpu"), verbose=False,
            callbacks=[counter]).fit()
    assert counter.steps == list(range(1, 7)) and counter.epochs == [1, 2]


class Shared(TrainStep):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)

    def trained_modules(self):
        return {"net": self.net}

    def optimizer_groups(self):
        return [OptimGroup("a", list(self.net.parameters())),
                OptimGroup("b", [self.net.weight])]


def test_groups_are_checked_before_training():
    data = vector_data()
    with pytest.raises(ConfigError, match="exactly one group"):
        Trainer(Shared(), data.train, num_classes=4,
                train=TrainConfig(epochs=1, device="cpu"), verbose=False).fit()
    with pytest.raises(ConfigError, match="TrainStep"):
        Trainer(nn.Linear(2, 2), data.train, num_classes=4)  # type: ignore[arg-type]


def test_unknown_optimizer_and_schedule_name_the_closest(tmp_path):
    data = vector_data()
    trainer = Trainer(AdversarialStep(), data.train, num_classes=4,
                      optim=OptimConfig(name="adamw2"), train=TrainConfig(epochs=1, device="cpu"),
                      verbose=False)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamw2'.*'adamw'"):
        trainer.fit()


def test_checkpoint_is_not_a_pickle_and_old_pickles_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    train_adversarial(str(run_dir), epochs=1)
    raw = (run_dir / "checkpoint.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16]  # no pickle header: a safetensors file
    (run_dir / "checkpoint.safetensors").unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"whatever")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(run_dir / "checkpoint.safetensors")


def test_batch_source_must_make_batches():
    source = GeneratorSource(lambda g: torch.zeros(2), steps_per_epoch=1)
    from kdforge.core.source import SourceContext

    source.bind(SourceContext(torch.device("cpu")))
    with pytest.raises(ConfigError, match="Batch"):
        next(iter(source.epoch(0, seed=0)))
    assert isinstance(GeneratorSource(noise_batches(2, (1,)), 1).make(torch.Generator()), Batch)


def test_peer_teacher_follows_the_mode_and_detaches_its_outputs():
    from kdforge.teachers.peer import PeerTeacher

    peer_net = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    peer = PeerTeacher(peer_net, features=["0"])
    peer.train()
    assert peer_net.training and all(p.requires_grad for p in peer_net.parameters())
    out = peer(torch.randn(6, 8))
    assert not out.logits.requires_grad and out.features["0"].shape == (6, 4)
    assert int(peer_net[1].num_batches_tracked) == 1  # a peer's BatchNorm learns
    frozen = ModuleTeacher(nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)))
    frozen.train()
    assert not frozen.model.training
    live = PeerTeacher(nn.Linear(8, 4), detach=False)(torch.randn(2, 8))
    assert live.logits.requires_grad


def test_a_group_with_every_k_runs_on_every_kth_batch_with_its_own_schedule_and_means():
    data = vector_data()
    seen: list[set[str]] = []
    adversary_losses: list[float] = []

    class Phases(Callback):
        def on_step(self, trainer, record) -> None:
            seen.append(set(record.results))
            if "adversary" in record.results:
                adversary_losses.append(float(record.results["adversary"].loss.detach()))

    trainer = Trainer(AdversarialStep(every=2), data.train, num_classes=4, batch_size=32,
                      train=TrainConfig(epochs=2, device="cpu"), verbose=False,
                      callbacks=[Phases()])
    trainer.fit()
    per_epoch = trainer.steps_per_epoch
    assert per_epoch == 3
    # batches 0 and 2 of each epoch run both phases, batch 1 the student only
    assert seen == [{"adversary", "student"}, {"student"}, {"adversary", "student"}] * 2
    adam = trainer.updater.optimizer("adversary")
    assert int(next(iter(adam.state.values()))["step"]) == 4
    # its cosine spans its own 2 x 2 steps: it ends at 0, not at cos(pi 4/6)
    assert trainer.history[-1]["lr/adversary"] == pytest.approx(0.0, abs=1e-12)
    # the epoch's logged mean is over the batches its phase ran on (equal batch sizes)
    assert trainer.history[0]["train/adversary/loss"] == pytest.approx(
        sum(adversary_losses[:2]) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="'every' must be an integer >= 1"):
        AdversarialStep(every=0).optimizer_groups()
