"""Cross-modal distillation (Gupta et al. 2016): the modalities, the per-sample pairing, the
loss on paired inputs, runs, resume, the unlabelled variant and the refused configs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.datasets import ArrayDataset
from kdforge.data.loaders import eval_loader, set_epoch, to_batch, train_loader
from kdforge.data.modalities import MODALITIES, PairedModality, build_modality
from kdforge.distill.distiller import Distiller
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.losses.response import CE, KD
from kdforge.models.runs import load_run_model, read_model_description
from tests.conftest import synthetic_config, train_until


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A small teacher trained on the clean synthetic 1x8x8 samples."""
    root = tmp_path_factory.mktemp("teacher")
    cfg = synthetic_config(root, name="teacher", student={"name": "mlp", "hidden": [32]},
                           train={"epochs": 3})
    return str(api.train(parse_config(cfg), verbose=False).run_dir)


def cross_config(tmp_path, teacher, name="xm", modality=None, labels=True, losses=None,
                 **sections):
    scheme = {"name": "cross_modal", "labels": labels,
              "modality": modality if modality is not None else [
                  {"name": "blur", "sigma": 1.0}, {"name": "downsample", "factor": 2}]}
    teacher_section = {"teacher": {"run": teacher}} if teacher is not None else {}
    losses = losses if losses is not None else [{"name": "ce", "weight": 0.1},
                                                {"name": "kd", "weight": 0.9, "T": 4}]
    return parse_config(synthetic_config(tmp_path, name=name, scheme=scheme, losses=losses,
                                         **teacher_section, **sections))


def signals(n=12, length=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, 1, length, generator=gen), torch.arange(n) % 3)


# -- the transforms ---------------------------------------------------------------------------

def test_blur_is_a_normalised_gaussian_and_keeps_constants():
    blur = build_modality([{"name": "blur", "sigma": 1.5, "radius": 2}], (1, 9))
    impulse = torch.zeros(1, 1, 9)
    impulse[0, 0, 4] = 1.0
    w = torch.tensor([math.exp(-(j * j) / (2 * 1.5**2)) for j in range(-2, 3)])
    expected = torch.zeros(9)
    expected[2:7] = w / w.sum()
    keys = torch.zeros(1, dtype=torch.int64)
    torch.testing.assert_close(blur(impulse, keys)[0, 0], expected)
    const = torch.full((2, 1, 9), 3.25)
    torch.testing.assert_close(blur(const, torch.arange(2)), const)  # edges included

    image = build_modality([{"name": "blur", "sigma": 1.0}], (2, 7, 7))
    assert image.output_shape == (2, 7, 7)
    dot = torch.zeros(1, 2, 7, 7)
    dot[0, 1, 3, 3] = 1.0
    out = image(dot, keys)
    k = image.steps[0].kernel  # radius 3: 7 taps, the whole image
    torch.testing.assert_close(out[0, 1], torch.outer(k, k))  # separable, per channel
    assert out[0, 0].abs().max() == 0
    flat = torch.full((3, 2, 7, 7), -1.5)
    torch.testing.assert_close(image(flat, torch.arange(3)), flat)


def test_downsample_averages_windows_and_changes_the_shape():
    half = build_modality([{"name": "downsample", "factor": 2}], (1, 40))
    assert half.output_shape == (1, 20)
    x = torch.arange(80.0).reshape(2, 1, 40)
    out = half(x, torch.arange(2))
    assert out.shape == (2, 1, 20)
    torch.testing.assert_close(out[1, 0, 3], (x[1, 0, 6] + x[1, 0, 7]) / 2)
    odd = build_modality([{"name": "downsample", "factor": 3}], (2, 8, 7))
    assert odd.output_shape == (2, 2, 2)
    img = torch.randn(1, 2, 8, 7)
    torch.testing.assert_close(odd(img, torch.arange(1))[0, 1, 1, 0], img[0, 1, 3:6, 0:3].mean())


def test_noise_and_mask_are_seeded_per_sample_whatever_the_batch():
    x = torch.randn(6, 1, 10)
    keys = torch.tensor([10, 11, 12, 13, 14, 15])
    for spec in ({"name": "noise", "std": 0.7}, {"name": "mask", "fraction": 0.4}):
        m = build_modality([spec], (1, 10))
        whole = m(x, keys)
        alone = torch.cat([m(x[i:i + 1], keys[i:i + 1]) for i in range(6)])
        reordered = m(x[[5, 2, 0]], keys[[5, 2, 0]])
        torch.testing.assert_close(whole, alone)
        torch.testing.assert_close(reordered, whole[[5, 2, 0]])
        other_keys = m(x, keys + 100)
        other_seed = build_modality([{**spec, "seed": 7}], (1, 10))(x, keys)
        assert not torch.equal(other_keys, whole) and not torch.equal(other_seed, whole)
    noise = build_modality([{"name": "noise", "std": 0.7}], (1, 10))
    same = torch.zeros(2, 1, 10)
    drawn = noise(same, torch.tensor([3, 4]))
    assert not torch.equal(drawn[0], drawn[1])  # two samples, two draws
    big = noise(torch.zeros(400, 1, 10), torch.arange(400))
    assert float(big.std()) == pytest.approx(0.7, rel=0.05)
    mask = build_modality([{"name": "mask", "fraction": 0.4}], (1, 10))
    zeroed = (mask(torch.ones(400, 1, 10), torch.arange(400)) == 0).float().mean()
    assert float(zeroed) == pytest.approx(0.4, abs=0.03)


def test_project_is_one_fixed_linear_map_to_dim_features():
    m = build_modality([{"name": "project", "dim": 5}], (1, 8, 8))
    assert m.output_shape == (1, 5)
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    keys = torch.arange(3)
    torch.testing.assert_close(m(2 * a - b, keys), 2 * m(a, keys) - m(b, keys))
    torch.testing.assert_close(m(a[1:2], keys[:1]), m(a, keys)[1:2])  # not per sample
    again = build_modality([{"name": "project", "dim": 5}], (1, 8, 8))
    torch.testing.assert_close(again(a, keys), m(a, keys))
    chain = build_modality([{"name": "downsample", "factor": 2}, {"name": "project", "dim": 3}],
                           (1, 8, 8))
    assert chain.output_shape == (1, 3) and chain.name == "downsample+project"


# -- pairing ----------------------------------------------------------------------------------

def test_each_batch_pairs_sample_i_with_its_own_modality_under_shuffling():
    base = signals(n=40, length=12)
    m = build_modality([{"name": "noise", "std": 1.0}, {"name": "downsample", "factor": 3}],
                       (1, 12))
    paired = PairedModality(base, m, stream=0)
    loader = train_loader(paired, 8, seed=3)
    seen = {}
    orders = []
    for epoch in range(2):
        set_epoch(loader, epoch)
        order = []
        for raw in loader:
            batch = to_batch(raw)
            assert batch.inputs.shape[1:] == (1, 4)
            for row, i in enumerate(batch.index.tolist()):
                order.append(i)
                torch.testing.assert_close(batch.teacher_inputs[row], base[i]["input"])
                assert batch.targets[row] == base.targets[i]
                single = paired[i]
                torch.testing.assert_close(batch.inputs[row], single["input"])
                if i in seen:  # the same representation in the next epoch
                    torch.testing.assert_close(batch.inputs[row], seen[i])
                seen[i] = batch.inputs[row].clone()
        orders.append(order)
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(40))
    # the representation is the modality of the clean sample, computed alone
    key = torch.tensor([7])
    torch.testing.assert_close(paired[7]["input"], m(base[7]["input"][None], key)[0])
    # a subset keeps its samples' keys, hence their representations
    sub = paired.subset([7, 2])
    torch.testing.assert_close(sub[0]["input"], paired[7]["input"])
    # another split (stream) of the same rows draws other noise
    other = PairedModality(base, m, stream=2)
    assert not torch.equal(other[7]["input"], paired[7]["input"])


def test_step_loss_on_a_paired_batch_follows_the_formula():
    base = signals(n=6, length=6, seed=1)
    paired = PairedModality(base, build_modality([{"name": "blur", "sigma": 1.0,
                                                   "radius": 1}], (1, 6)))
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    T = 2.0
    step = Distiller(student, teacher, [CE(weight=0.3), KD(weight=0.7, T=T)])
    batch = to_batch(paired.__getitems__([4, 0, 3]))
    loss = step.step(batch).loss

    # independently: blur by hand (kernel e^{-1/2}, 1, e^{-1/2}, edges repeated)
    clean = base.inputs[[4, 0, 3], 0]
    e = math.exp(-0.5)
    padded = torch.cat([clean[:, :1], clean, clean[:, -1:]], dim=1)
    blurred = (e * padded[:, :-2] + padded[:, 1:-1] + e * padded[:, 2:]) / (1 + 2 * e)
    with torch.no_grad():
        t = teacher(clean[:, None])      # the teacher sees the clean sample
    s = student(blurred[:, None])        # the student its modality
    y = base.targets[[4, 0, 3]]
    ce = -F.log_softmax(s, -1).gather(1, y[:, None]).mean()
    q = F.softmax(t / T, -1)
    kl = (q * (q.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * T * T * kl)


# -- runs -------------------------------------------------------------------------------------

def test_run_trains_the_student_on_its_modality_and_measures_agreement_on_clean_pairs(
        tmp_path, teacher_run):
    cfg = cross_config(tmp_path, teacher_run, modality={"name": "downsample", "factor": 2},
                       optim={"name": "adamw", "lr": 0.01}, train={"epochs": 4})
    result = api.train(cfg, verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] == "downsample" and record["student"] == "mlp"
    assert record["test_accuracy"] == pytest.approx(100 * result.summary["test"]["accuracy"])
    assert result.summary["scheme"]["student_shape"] == [1, 4, 4]
    assert read_model_description(result.run_dir)["input_shape"] == [1, 4, 4]
    # recompute both numbers: the student on m(x) of the test set, the teacher on x
    student, teacher = load_run_model(result.run_dir), load_run_model(teacher_run)
    student.eval()
    teacher.eval()
    data = api.build_data(cfg)
    m = build_modality([{"name": "downsample", "factor": 2}], (1, 8, 8))
    test = PairedModality(data.test, m, stream=2)
    right = agree = 0
    with torch.no_grad():
        for raw in eval_loader(test, 64):
            b = to_batch(raw)
            s, t = student(b.inputs).argmax(-1), teacher(b.teacher_inputs).argmax(-1)
            right += int((s == b.targets).sum())
            agree += int((s == t).sum())
    assert record["test_accuracy"] == pytest.approx(100 * right / len(test), abs=1e-3)
    assert record["agreement"] == pytest.approx(100 * agree / len(test), abs=1e-3)
    assert record["agreement"] > 40  # it learned the teacher's classes (chance: 25)
    again = api.evaluate_run(result.run_dir)  # kdforge evaluate: on the same modality
    assert again["accuracy"] == pytest.approx(result.summary["test"]["accuracy"])
    assert again["agreement"] == pytest.approx(result.summary["test"]["agreement"])


def test_student_alone_baseline_on_the_same_modality(tmp_path):
    result = api.train(cross_config(tmp_path, None, name="alone",
                                    modality={"name": "downsample", "factor": 2},
                                    losses=[{"name": "ce"}]), verbose=False)
    (record,) = result.summary["records"]
    assert record["variant"] == "downsample-alone" and record["agreement"] is None
    assert read_model_description(result.run_dir)["input_shape"] == [1, 4, 4]


def test_unlabelled_variant_never_shows_the_targets_to_the_losses(tmp_path, teacher_run,
                                                                 monkeypatch):
    seen = []
    original = KD.forward

    def spy(self, student, teacher, batch):
        seen.append(batch.targets)
        return original(self, student, teacher, batch)

    monkeypatch.setattr(KD, "forward", spy)
    cfg = cross_config(tmp_path, teacher_run, name="unlabelled", labels=False,
                       losses=[{"name": "kd", "T": 4}], train={"epochs": 1})
    run = api.Run(cfg, verbose=False)
    assert "target" not in run.data.train[0] and run.data.train.targets is None
    assert "target" in run.data.test[0]  # the test set keeps labels to measure accuracy
    for _ in run.epochs():
        pass
    result = run.finish()
    assert len(seen) >= 3 and all(t is None for t in seen)
    (record,) = result.summary["records"]
    assert record["variant"] == "blur+downsample-unlabelled" and record["agreement"] > 0


def test_cross_modal_resumes_to_the_same_weights_and_records(tmp_path, teacher_run):
    cfg = cross_config(tmp_path, teacher_run, modality=[{"name": "noise", "std": 0.5},
                                                        {"name": "downsample", "factor": 2}],
                       train={"epochs": 3},
                       student={"name": "mlp", "hidden": [16], "dropout": 0.2})
    full = api.train(cfg, verbose=False)

    train_until(cfg, 2)
    resumed = api.resume(tmp_path / "runs" / "cut", verbose=False)
    one = load_checkpoint(full.run_dir / "checkpoint.safetensors")["modules"]["student"]
    two = load_checkpoint(resumed.run_dir / "checkpoint.safetensors")["modules"]["student"]
    for key, value in one.items():
        assert torch.equal(value, two[key]), key
    drop = ("run_dir", "train_seconds")
    assert ({k: v for k, v in resumed.summary["records"][0].items() if k not in drop}
            == {k: v for k, v in full.summary["records"][0].items() if k not in drop})


# -- refused configs --------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"modality": "blurr"}, "closest valid names: 'blur'"),
    ({"modality": {"name": "blur", "sigmaa": 2}}, "no option 'sigmaa'"),
    ({"modality": {"name": "blur", "sigma": -1}}, "sigma must be > 0"),
    ({"modality": {"name": "downsample", "factor": 16}}, "longer than"),
    ({"modality": {"name": "mask", "fraction": 1.0}}, "fraction must be"),
    ({"modality": []}, "needs a modality"),
    ({"labels": False}, "read only the labels"),
    ({"losses": [{"name": "kd"}], "teacher": None}, "no 'teacher' section"),
    ({"losses": [{"name": "kd"}], "teacher": None, "labels": False}, "teacher alone"),
    ({"view": {"name": "consistent"}}, "remove the 'view' section"),
    ({"teacher": {"name": "mlp", "weights": "w.safetensors"}}, "must be a run directory"),
    ({"data": {"input_shape": [1, 16]}}, "takes inputs of shape"),
    ({"data": {"input_shape": [64]}, "modality": "blur", "teacher": None,
      "losses": [{"name": "ce"}]}, "works on \\(C, L\\) signals"),
    ({"colour": 1}, "colour"),
])
def test_bad_cross_modal_configs_are_refused_before_training(tmp_path, teacher_run, changes,
                                                             message):
    changes = dict(changes)
    scheme = {"modality": changes.pop("modality", {"name": "downsample", "factor": 2}),
              "labels": changes.pop("labels", True)}
    if "colour" in changes:
        scheme["colour"] = changes.pop("colour")
    losses = changes.pop("losses", None)
    teacher = changes.pop("teacher", teacher_run)
    cfg = synthetic_config(tmp_path, name="bad", losses=losses or [{"name": "ce"},
                                                                   {"name": "kd"}],
                           scheme={"name": "cross_modal", **scheme}, **changes)
    if teacher is not None:
        cfg["teacher"] = {"run": teacher} if isinstance(teacher, str) else teacher
    with pytest.raises(ConfigError, match=message):
        api.train(parse_config(cfg), verbose=False)
    assert not (tmp_path / "runs" / "bad").exists()  # refused before anything was written


def test_every_registered_modality_states_its_output_shape():
    x = torch.randn(3, 1, 8, 8)
    for name in MODALITIES.names():
        m = build_modality([{"name": name}], (1, 8, 8))
        assert m(x, torch.arange(3)).shape == (3, *m.output_shape), name
