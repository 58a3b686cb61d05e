"""Deep mutual learning (Zhang et al. 2018): the loss, gradient routing, runs, DDP."""


import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError, ShapeMismatchError
from kdforge.core.outputs import Batch
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.runs import load_run_model
from kdforge.schemes.mutual import MutualStep, mutual_losses
from tests.conftest import synthetic_config, train_until
from tests.engine.test_distributed import torchrun


def dml_config(tmp_path, name="dml", peers=None, **sections):
    peers = peers if peers is not None else [{"name": "mlp", "hidden": [8]}]
    return synthetic_config(tmp_path, name=name, scheme={"name": "dml", "peers": peers},
                            **sections)


def test_mutual_losses_follow_the_formula_on_hand_made_logits():
    z = [torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]),
         torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]]),
         torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])]
    y = torch.tensor([0, 2])
    T = 2.0
    ces, kls = mutual_losses(z, y, T)
    for k in range(3):
        p_k = F.softmax(z[k] / T, -1)
        expected = 0.0
        for j in range(3):
            if j != k:
                q = F.softmax(z[j] / T, -1)
                expected += (q * (q.log() - p_k.log())).sum(-1).mean()
        torch.testing.assert_close(kls[k], expected * T * T / 2)
        torch.testing.assert_close(ces[k], F.cross_entropy(z[k], y))


def test_identical_peers_have_zero_mimicry_loss():
    z = torch.randn(5, 4)
    _, kls = mutual_losses([z, z.clone()], None)
    assert all(float(kl) == pytest.approx(0.0, abs=1e-6) for kl in kls)


def test_each_peer_gets_gradients_from_the_others_but_not_through_them():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    x = torch.randn(6, 3)
    _, kls = mutual_losses([a(x), b(x)], None)
    kls[0].backward()  # peer 0's mimicry of peer 1
    assert a.weight.grad is not None and a.weight.grad.abs().sum() > 0
    assert b.weight.grad is None  # peer 1's prediction entered as a constant


def test_peers_with_different_class_counts_are_refused_before_training():
    step = MutualStep([nn.Linear(3, 4), nn.Linear(3, 5)])
    with pytest.raises(ShapeMismatchError, match="different numbers of classes"):
        step.prepare(Batch(torch.randn(2, 3), torch.tensor([0, 1])))
    with pytest.raises(ConfigError, match="at least two peers"):
        MutualStep([nn.Linear(3, 4)])


def test_bad_dml_configs_are_refused_with_a_message(tmp_path):
    with pytest.raises(ConfigError, match="at least one more peer"):
        api.train(parse_config(dml_config(tmp_path, peers=[])), verbose=False)
    with pytest.raises(ConfigError, match="no option|unknown|extra"):
        api.train(parse_config(synthetic_config(
            tmp_path, scheme={"name": "dml", "peers": [{"name": "mlp"}], "temperature": 2})),
            verbose=False)
    with pytest.raises(ConfigError, match="dml"):
        api.train(parse_config(synthetic_config(tmp_path, scheme={"name": "dmll"})),
                  verbose=False)


def test_dml_run_evaluates_and_saves_every_peer_and_the_ensemble(tmp_path):
    cfg = parse_config(dml_config(tmp_path, train={"epochs": 2},
                                  peers=[{"name": "mlp", "hidden": [8]},
                                         {"name": "mlp", "hidden": [24]}]))
    result = api.train(cfg, verbose=False)
    records = {r["variant"]: r for r in result.summary["records"]}
    assert sorted(records) == ["ensemble", "peer1", "peer2", "student"]
    assert records["student"]["test_accuracy"] == pytest.approx(
        100 * result.summary["test"]["accuracy"])
    run = result.run_dir
    peer2 = load_run_model(run / "peer2")
    weights = load_file(run / "model-peer2.safetensors")
    for key, value in peer2.state_dict().items():
        assert torch.equal(value, weights[key])
    assert peer2.fc.in_features == 24  # the peer's own architecture


def test_dml_resumes_to_the_same_weights(tmp_path):
    cfg = parse_config(dml_config(tmp_path, train={"epochs": 3}))
    full = api.train(cfg, verbose=False)

    train_until(cfg, 1)
    resumed = api.resume(tmp_path / "runs" / "cut", verbose=False)
    one = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]
    two = load_checkpoint(resumed.run_dir / "checkpoint.safetensors")["modules"]
    for name in ("student", "peer1"):
        for key, value in one[name].items():
            assert torch.equal(value, two[name][key]), (name, key)
    for mine, theirs in zip(full.summary["records"], resumed.summary["records"], strict=True):
        assert mine["test_accuracy"] == theirs["test_accuracy"]


@pytest.mark.slow
def test_dml_on_two_processes_equals_one_process(tmp_path):
    base = dml_config(tmp_path, train={"epochs": 2}, optim={"name": "sgd", "lr": 0.1})
    one = api.train(parse_config({**base, "name": "one"}), verbose=False)
    path = tmp_path / "dml.yaml"
    path.write_text(yaml.safe_dump({**base, "name": "two"}))
    torchrun("-m", "kdforge.cli", "train", str(path), "--quiet")
    a = load_checkpoint(one.run_dir / "checkpoint.safetensors")["modules"]
    b = load_checkpoint(tmp_path / "runs" / "two" / "checkpoint.safetensors")["modules"]
    for name in ("student", "peer1"):
        for key, value in a[name].items():
            torch.testing.assert_close(b[name][key], value, rtol=1e-5, atol=1e-6)
    two = api.load_run_summary(tmp_path / "runs" / "two")
    for mine, theirs in zip(one.summary["records"], two["records"], strict=True):
        assert theirs["test_accuracy"] == pytest.approx(mine["test_accuracy"], abs=1e-4)
