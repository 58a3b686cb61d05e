"""``byot`` (Be Your Own Teacher): the loss from its formula, exits attached by hooks without
rewriting the network, the detached teacher signal, early-exit records, resume, bad configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.core.outputs import Batch
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models import count_parameters, create_model
from kdforge.schemes.exit_heads import parameters_run
from kdforge.schemes.exits import SelfDistillStep, byot_losses
from tests.conftest import synthetic_config, train_until

SHAPE = (1, 16)  # cnn1d: 16 -> 8 -> 4 -> 2 positions; the deepest feature fc@input has 4 * 2
EXITS = ["blocks.0", "blocks.1"]


def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn1d", 4, SHAPE, channels=[4, 4, 4])


def batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(n, *SHAPE, generator=g), torch.arange(n) % 4)


def byot_cfg(tmp_path, **sections):
    scheme = {"name": "byot", "exits": EXITS, **sections.pop("scheme", {})}
    return synthetic_config(tmp_path, data={"input_shape": list(SHAPE)},
                            student={"name": "cnn1d", "channels": [4, 4, 4]}, scheme=scheme,
                            **sections)


# -- (1) the formula ---------------------------------------------------------------------------

def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def test_loss_is_the_papers_formula_on_hand_made_tensors():
    z_exit = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    z_final = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    hint = [[1.0, 0.0], [0.5, -0.5]]
    feat = [[0.0, 2.0], [0.5, 1.5]]
    y = [1, 2]
    T, alpha, lam = 2.0, 0.4, 0.1
    terms = byot_losses([torch.tensor(z_exit)], [torch.tensor(hint)], torch.tensor(z_final),
                        torch.tensor(feat), torch.tensor(y), T=T, alpha=alpha, hint_weight=lam)

    ce = sum(-math.log(_softmax(z)[c]) for z, c in zip(z_exit, y, strict=True)) / 2
    kl = sum(sum(p * (math.log(p) - math.log(q))
                 for p, q in zip(_softmax(zc, T), _softmax(zi, T), strict=True))
             for zc, zi in zip(z_final, z_exit, strict=True)) / 2
    sq = sum(sum((a - b) ** 2 for a, b in zip(h, f, strict=True)) for h, f in zip(hint, feat, strict=True)) / 2
    final = sum(-math.log(_softmax(z)[c]) for z, c in zip(z_final, y, strict=True)) / 2
    assert terms["ce"][0].item() == pytest.approx((1 - alpha) * ce, rel=1e-5)
    assert terms["kl"][0].item() == pytest.approx(alpha * kl, rel=1e-5)  # no T^2 (the paper's)
    assert terms["hint"][0].item() == pytest.approx(lam * sq, rel=1e-5)
    assert terms["final"][0].item() == pytest.approx(final, rel=1e-5)


# -- (2) what is specific to byot --------------------------------------------------------------

def test_exits_are_attached_by_hooks_without_rewriting_the_network():
    net, b = cnn(), batch()
    net.eval()
    keys = list(net.state_dict())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modules = [(n, type(m).__name__) for n, m in net.named_modules()]
    with torch.no_grad():
        before = net(b.inputs)
    net.train()
    step = SelfDistillStep(net, EXITS)
    step.prepare(b)
    net.eval()
    assert step.feature == "fc@input"  # the documented default: the classifier's input
    assert len(step.heads) == 2 and step.exit_shapes == {"blocks.0": [4, 8], "blocks.1": [4, 4]}
    assert list(net.state_dict()) == keys
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # no BN update
    assert [(n, type(m).__name__) for n, m in net.named_modules()] == modules
    with torch.no_grad():
        assert torch.equal(net(b.inputs), before)
    # the heads are their own module; the network keeps none of their parameters
    assert not {id(p) for p in step.heads.parameters()} & {id(p) for p in net.parameters()}


def test_detached_teacher_signal_and_hints_reach_the_shallow_layers():
    net, b = cnn(), batch()
    step = SelfDistillStep(net, EXITS, T=3.0, alpha=0.3, hint_weight=0.03)
    step.prepare(b)
    step.train()
    result = step.step(b)
    kl = sum(v for k, v in result.parts.items() if k.endswith("/kl"))
    hint = sum(v for k, v in result.parts.items() if k.endswith("/hint"))
    first, last, fc = net.blocks[0][0].weight, net.blocks[2][0].weight, net.fc.weight
    logits = result.student_outputs.logits
    for term in (kl, hint):
        g_first, g_last, g_fc, g_logits = torch.autograd.grad(
            term, [first, last, fc, logits], retain_graph=True, allow_unused=True)
        assert g_first is not None and g_first.abs().sum() > 0  # reaches the shallow layers
        assert g_last is None and g_fc is None  # nothing flows into the deeper layers ...
        assert g_logits is None  # ... nor into the deepest classifier's output (detached)
    g_fc = torch.autograd.grad(result.parts["final/ce"], fc)[0]
    assert g_fc.abs().sum() > 0  # the deepest classifier learns from the labels
    assert torch.allclose(result.loss, sum(result.parts.values()))


def test_a_stopped_forward_gives_the_exit_logits_and_runs_no_later_layer():
    net, b = cnn(), batch()
    step = SelfDistillStep(net, EXITS)
    step.prepare(b)
    step.eval()
    with torch.no_grad():
        out, exit_logits, _ = step.exit_outputs(b.inputs)
        calls = []
        handle = net.blocks[2].register_forward_hook(lambda *a: calls.append(1))
        early = step.exit_model(1)(b.inputs)
        handle.remove()
        assert not calls
        assert torch.allclose(early, exit_logits[1])
        assert parameters_run(net, "blocks.1", b.inputs) == (
            count_parameters(net.blocks[0]) + count_parameters(net.blocks[1]))
        assert parameters_run(net, "blocks.2.0@input", b.inputs) == (
            count_parameters(net.blocks[0]) + count_parameters(net.blocks[1]))


# -- (3) end to end ----------------------------------------------------------------------------

def test_train_reports_one_record_per_exit_the_final_and_the_ensemble(tmp_path):
    result = api.train(parse_config(byot_cfg(tmp_path)), verbose=False)
    records = result.summary["records"]
    assert [r["variant"] for r in records] == [*EXITS, "final", "ensemble"]
    by = {r["variant"]: r for r in records}
    net = cnn()
    step_heads = load_file(result.run_dir / "model-exits.safetensors")
    head_params = [sum(v.numel() for k, v in step_heads.items()
                       if k.startswith(f"{i}.") and "running" not in k and "num_batches" not in k)
                   for i in range(2)]
    assert by["blocks.0"]["params"] == count_parameters(net.blocks[0]) + head_params[0]
    assert by["blocks.1"]["params"] == (count_parameters(net.blocks[0])
                                        + count_parameters(net.blocks[1]) + head_params[1])
    assert by["final"]["params"] == count_parameters(net)
    assert by["ensemble"]["params"] == count_parameters(net) + sum(head_params)
    assert by["final"]["test_accuracy"] == pytest.approx(100 * result.summary["test"]["accuracy"])
    assert by["final"]["agreement"] == 100.0
    for r in records:
        assert 0 <= r["test_accuracy"] <= 100 and 0 <= r["agreement"] <= 100
        assert r["latency_ms"] > 0 and r["latency_batch"] == 1 and r["exit"] == r["variant"]
        assert r["student"] == "cnn1d" and r["run_dir"] == str(result.run_dir)
    # the run's model is the plain network; the heads are saved beside it
    assert sorted(load_file(result.run_dir / "model.safetensors")) == sorted(net.state_dict())
    assert result.summary["scheme"]["feature"] == "fc@input"
    logged = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train/blocks.0/kl", "train/blocks.1/hint", "train/final/ce"} <= set(logged)


# -- (4) resume --------------------------------------------------------------------------------

def test_resume_after_an_interruption_gives_the_same_result(tmp_path):
    cfg = parse_config(byot_cfg(tmp_path, train={"epochs": 4}))
    full = api.train(cfg, verbose=False)

    train_until(cfg, 2)
    run_dir = tmp_path / "runs" / "cut"
    assert not (run_dir / "model-exits.safetensors").exists()
    resumed = api.resume(run_dir, verbose=False)
    a = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]
    b = load_checkpoint(run_dir / "checkpoint.safetensors")["modules"]
    assert sorted(a) == sorted(b) == ["exits", "student"]
    for name in a:
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)

    def scores(r):
        return [(x["variant"], x["test_accuracy"], x["agreement"], x["params"])
                for x in r.summary["records"]]

    assert scores(resumed) == scores(full)


# -- (5) bad configs ---------------------------------------------------------------------------

@pytest.mark.parametrize(("scheme", "extra", "message"), [
    ({"exits": []}, {}, "at least one exit"),
    ({"exits": ["blocks.9"]}, {}, "blocks.0"),  # lists the close names
    ({"exits": ["fc"]}, {}, "final layer"),
    ({"exits": ["blocks.1"], "feature": "blocks.0"}, {}, "runs after the deepest feature"),
    ({"exits": ["blocks.0", "blocks.0"]}, {}, "twice"),
    ({"alpha": 1.5}, {}, "alpha"),
    ({}, {"losses": [{"name": "kd", "T": 4}]}, "computes its own losses"),
])
def test_bad_configs_are_refused_before_training(tmp_path, scheme, extra, message):
    cfg = byot_cfg(tmp_path, scheme=scheme, **extra)
    with pytest.raises(ConfigError, match=message):
        api.train(parse_config(cfg), verbose=False)
    assert not (tmp_path / "runs" / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "runs" / "run" / "checkpoint.safetensors").exists()
