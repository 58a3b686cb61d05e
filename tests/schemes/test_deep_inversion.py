"""DeepInversion (deepinversion): the synthesis loss terms from their formulas, the frozen
teacher, the saved transfer set, the data-free student stage, resume and refusals."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge import api, stages
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.datasets.arrays import ArrayDataset
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.schemes import deep_inversion as di
from kdforge.schemes.base import TrainingInputsForbidden
from kdforge.schemes.inversion_losses import (
    BNStatistics,
    competition,
    js_divergence,
    l2_prior,
    total_variation,
)
from tests.conftest import TinyNet, synthetic_config
from tests.schemes.spies import StageSpy

KD = [{"name": "kd", "T": 2}]
SMALL = {"batches": 2, "batch_size": 16, "iterations": 40, "lr": 0.1}


# -- the loss terms, from their formulas --------------------------------------------------------

def test_total_variation_is_the_mean_absolute_neighbour_difference_per_axis():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])  # (1, 1, 2, 2)
    # rows: |3-0|, |7-1| -> mean 4.5; columns: |1-0|, |7-3| -> mean 2.5
    assert total_variation(x).item() == pytest.approx(7.0)
    signal = torch.tensor([[[1.0, -1.0, 2.0]]])  # (1, 1, 3): |-2|, |3| -> 2.5
    assert total_variation(signal).item() == pytest.approx(2.5)
    assert total_variation(torch.tensor([[0.0, 2.0, 2.0]])).item() == pytest.approx(1.0)


def test_l2_prior_is_the_squared_norm_averaged_over_the_batch():
    x = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    assert l2_prior(x).item() == pytest.approx((5.0 + 9.0) / 2)


def test_bn_statistics_term_compares_batch_statistics_of_bn_inputs_with_running_ones():
    torch.manual_seed(0)
    net = TinyNet(num_classes=3, width=2).eval()
    net.bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    net.bn.running_var.copy_(torch.tensor([2.0, 0.25]))
    x = torch.randn(5, 1, 8, 8)
    with BNStatistics(net) as stats:
        net(x)
    h = net.conv(x).detach()  # the BN layer's input, computed by hand
    mean = [h[:, c].mean().item() for c in range(2)]
    var = [((h[:, c] - h[:, c].mean()) ** 2).mean().item() for c in range(2)]
    expected = (math.sqrt((mean[0] - 0.5) ** 2 + (mean[1] + 1.0) ** 2)
                + math.sqrt((var[0] - 2.0) ** 2 + (var[1] - 0.25) ** 2))
    assert stats.loss.item() == pytest.approx(expected, rel=1e-5)
    assert not net.bn._forward_pre_hooks  # the hooks are gone after the block


def test_js_divergence_and_competition_from_the_formula():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    # row 1 identical: JS 0; row 2 disjoint: JS = ln 2
    assert js_divergence(p, q).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    t, s = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    pt, ps = t.softmax(1)[0].tolist(), s.softmax(1)[0].tolist()
    m = [(a + b) / 2 for a, b in zip(pt, ps, strict=True)]
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(pt, m, strict=True)) + \
        0.5 * sum(b * math.log(b / c) for b, c in zip(ps, m, strict=True))
    assert competition(t, s).item() == pytest.approx(1 - js, rel=1e-5)


# -- synthesis ------------------------------------------------------------------------------------

def _bn_teacher() -> nn.Module:
    torch.manual_seed(1)
    net = TinyNet(num_classes=4, width=4)
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 1.5)
    net.fc.weight.data.mul_(10)  # a confident classifier, as a trained one is
    return net.eval().requires_grad_(False)


def test_synthesis_leaves_teacher_weights_and_bn_statistics_bit_identical():
    teacher = _bn_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    targets = torch.arange(12) % 4
    opts = di.DeepInversionOptions(iterations=30, lr=0.1)
    x, parts = di.synthesize_batch(teacher, targets, (1, 8, 8), opts,
                                   generator=torch.Generator().manual_seed(0))
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not teacher.training
    noise = torch.randn((12, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with BNStatistics(teacher) as stats:
        start_ce = nn.functional.cross_entropy(teacher(noise), targets).item()
    start_feature = stats.loss.item()
    assert parts["ce"] < 0.5 * start_ce  # the teacher now sees the target classes
    assert parts["feature"] < start_feature
    assert (teacher(x).argmax(1) == targets).float().mean() >= 0.9


def test_competition_makes_inputs_the_teacher_and_student_disagree_on():
    teacher = _bn_teacher()
    torch.manual_seed(2)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval().requires_grad_(False)
    targets = torch.arange(16) % 4

    def disagreement(alpha_c: float) -> float:
        opts = di.DeepInversionOptions(iterations=40, lr=0.1, alpha_c=alpha_c)
        x, _ = di.synthesize_batch(teacher, targets, (1, 8, 8), opts, student=student,
                                   generator=torch.Generator().manual_seed(0))
        return js_divergence(teacher(x).softmax(1), student(x).softmax(1)).item()

    assert disagreement(10.0) > disagreement(0.0) + 0.05


# -- the scheme ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bn_teacher_run(tmp_path_factory):
    """A BatchNorm teacher trained once for this file's tests."""
    cfg = synthetic_config(tmp_path_factory.mktemp("teacher"), name="teacher", student={"name": "cnn2d",
                                                               "channels": [8, 16]},
                           train={"epochs": 6}, optim={"name": "adam", "lr": 0.01})
    return api.train(parse_config(cfg), verbose=False).run_dir


def di_config(tmp_path, teacher, name="di", **options):
    return parse_config(synthetic_config(
        tmp_path, name=name, teacher={"run": str(teacher)}, losses=KD,
        scheme={"name": "deepinversion", **SMALL, **options}))


@pytest.fixture
def forbid_training_inputs(monkeypatch):
    """Every run's training and validation sets raise on any read of an input."""
    original = api.build_data

    def build(cfg):
        data = original(cfg)
        return data.with_sets(train=TrainingInputsForbidden(data.train, "test"),
                              val=TrainingInputsForbidden(data.val, "test"))

    monkeypatch.setattr(api, "build_data", build)


def test_deepinversion_end_to_end_never_reads_a_training_input(tmp_path, bn_teacher_run,
                                                               forbid_training_inputs):
    result = api.train(di_config(tmp_path, bn_teacher_run), verbose=False)
    root = result.run_dir
    (record,) = result.summary["records"]
    assert record["variant"] is None and record["student"] == "mlp"
    assert record["training_inputs_read"] == 0 and record["synthesized"] == 32
    assert 0 <= record["test_accuracy"] <= 100 and 0 <= record["agreement"] <= 100
    assert record["train_seconds"] >= record["synthesis_seconds"] > 0
    assert (root / "synthesis" / "report.png").stat().st_size > 1000
    stage = api.load_config(root / "student" / "config.yaml")
    assert stage.scheme.name == "deepinversion-transfer"
    # the saved set reloads as a valid transfer set, labelled by the teacher
    saved = load_file(str(root / "synthesis" / di.SYNTHESIZED))
    assert saved["inputs"].shape == (32, 1, 8, 8)
    assert torch.equal(saved["targets"], torch.arange(32) % 4)
    assert torch.allclose(saved["teacher_probs"].sum(1), torch.ones(32))
    transfer = di.load_transfer_set([str(root / "synthesis" / di.SYNTHESIZED)])
    assert isinstance(transfer, ArrayDataset) and len(transfer) == 32
    batch = transfer.__getitems__([0, 5])
    assert torch.equal(batch["input"], saved["inputs"][[0, 5]])
    assert torch.equal(batch["target"], saved["teacher_probs"][[0, 5]].argmax(1))
    teacher = api.load_run_model(bn_teacher_run).eval()
    assert (teacher(saved["inputs"]).argmax(1) == saved["targets"]).float().mean() > 0.5


def test_competition_warms_a_student_then_synthesises_against_it(tmp_path, bn_teacher_run):
    cfg = di_config(tmp_path, bn_teacher_run, competition=True, alpha_c=5.0)
    result = api.train(cfg, verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] == "competition" and record["training_inputs_read"] == 0
    root = result.run_dir
    final = api.load_config(root / "student" / "config.yaml")
    assert final.student.init == str(root / "warm")
    assert len(final.scheme.options["sets"]) == 2
    assert load_file(str(root / "synthesis" / di.SYNTHESIZED))["inputs"].shape[0] == 16


def test_interrupted_student_stage_resumes_without_synthesising_again(
        tmp_path, bn_teacher_run, monkeypatch):
    full = api.train(di_config(tmp_path, bn_teacher_run, name="full"), verbose=False)
    spy = StageSpy(monkeypatch, interrupt="student", sequence="deepinversion")
    cfg = di_config(tmp_path, bn_teacher_run, name="cut")
    with pytest.raises(StageSpy.Stop):
        api.train(cfg, verbose=False)
    synthesised = []
    original = di.synthesize_batch
    monkeypatch.setattr(di, "synthesize_batch",
                        lambda *a, **k: synthesised.append(1) or original(*a, **k))
    resumed = stages.run_sequence(cfg, resume=True, verbose=False)
    assert synthesised == [] and spy.calls == [("student", False), ("student", True)]
    assert resumed.summary["records"][0]["test_accuracy"] == \
        full.summary["records"][0]["test_accuracy"]
    weights = {name: load_checkpoint(tmp_path / "runs" / name / "student" /
                                     "checkpoint.safetensors")["modules"]["student"]
               for name in ("full", "cut")}
    for key, value in weights["full"].items():
        assert torch.equal(value, weights["cut"][key]), key
    # an interrupted synthesis redoes only the unfinished batches, to the same inputs
    out = tmp_path / "runs" / "cut" / "synthesis"
    kept = load_file(str(out / di.SYNTHESIZED))
    (out / di.SYNTHESIZED).unlink()
    (out / "batch-001.safetensors").unlink()
    di.synthesize(out, api.load_run_model(bn_teacher_run),
                  di.DeepInversionOptions(**SMALL), num_classes=4, shape=(1, 8, 8),
                  seed=cfg.seed, first=0, count=2)
    assert len(synthesised) == 1
    assert torch.equal(load_file(str(out / di.SYNTHESIZED))["inputs"], kept["inputs"])


def test_refuses_a_teacher_without_batchnorm_and_bad_options(tmp_path):
    plain = synthetic_config(tmp_path, name="plain", student={"name": "cnn2d", "channels": [4],
                                                              "batchnorm": False},
                             train={"epochs": 1})
    plain_run = api.train(parse_config(plain), verbose=False).run_dir
    with pytest.raises(ConfigError, match="has no BatchNorm layer"):
        api.train(di_config(tmp_path, plain_run), verbose=False)
    assert not (tmp_path / "runs" / "di").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="set competition: true"):
        api.train(di_config(tmp_path, plain_run, warm_start=str(plain_run)), verbose=False)
    with pytest.raises(ConfigError, match="not a finished run"):
        api.train(di_config(tmp_path, plain_run, competition=True,
                            warm_start=str(tmp_path / "nowhere")), verbose=False)
    with pytest.raises(ConfigError, match="batches >= 2"):
        api.train(di_config(tmp_path, plain_run, competition=True, batches=1), verbose=False)
    with pytest.raises(ConfigError, match="iterations"):
        api.train(di_config(tmp_path, plain_run, iterations=0), verbose=False)
    no_teacher = synthetic_config(tmp_path, name="nt", losses=KD,
                                  scheme={"name": "deepinversion"})
    with pytest.raises(ConfigError, match="give a 'teacher' section"):
        api.train(parse_config(no_teacher), verbose=False)
