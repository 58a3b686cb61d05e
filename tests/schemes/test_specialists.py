"""Specialists (Hinton et al. 2015, sec. 5): clustering, the combination, the stages."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.runs import load_run_model, read_model_description
from kdforge.schemes.specialist_teacher import (
    SpecialistEnsemble,
    cluster_classes,
    combination_gradient,
    combination_objective,
    combine,
    dustbin_shifts,
    enforce_min_size,
    kmeans,
    mapped_log_q,
    prediction_covariance,
)
from kdforge.schemes.specialists import generalist_probs, write_specialist_init
from tests.conftest import synthetic_config

# -- hand-made helpers ---------------------------------------------------------------------


def confusable_predictions(pairs, n_per_class=20, seed=0):
    """Probabilities (N, K) of a generalist that confuses each pair: 0.6 on the class,
    0.3 on its partner, the rest spread, with a little noise."""
    k = 2 * len(pairs)
    partner = {}
    for a, b in pairs:
        partner[a], partner[b] = b, a
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(k):
        for _ in range(n_per_class):
            p = torch.full((k,), 0.1 / (k - 2))
            p[c], p[partner[c]] = 0.6, 0.3
            p = p + 0.02 * torch.rand(k, generator=gen)
            rows.append(p / p.sum())
    return torch.stack(rows)


def em_minimum(p_g, specialists):
    """The minimiser of KL(p^g||q) + sum_m KL(p^m||A_m q) for one sample, by the EM
    fixed point q <- (p^g + sum_m [special part of p^m, dustbin mass shared in proportion
    to q]) / (1 + M), run to convergence in float64: a method independent of the code's
    gradient descent."""
    q = p_g.double().clone()
    for _ in range(100000):
        r = p_g.double().clone()
        for subset, p_m in specialists:
            p_m = p_m.double()
            outside = [i for i in range(len(q)) if i not in subset]
            r[subset] += p_m[:-1]
            r[outside] += p_m[-1] * q[outside] / q[outside].sum()
        r = r / (1 + len(specialists))
        if float((r - q).abs().max()) < 1e-12:
            return r
        q = r
    raise AssertionError("the EM reference did not converge")


def objective_one(q, p_g, specialists):
    """KL(p^g||q) + sum_m KL(p^m || A_m q) written out for one sample."""
    q, p_g = q.double(), p_g.double()
    total = (p_g * (p_g.log() - q.log())).sum()
    for subset, p_m in specialists:
        p_m = p_m.double()
        outside = [i for i in range(len(q)) if i not in subset]
        mapped = torch.cat([q[subset], q[outside].sum().view(1)])
        total = total + (p_m * (p_m.log() - mapped.log())).sum()
    return float(total)


class Table(nn.Module):
    """A 'network' answering fixed logits per sample: input (B, 1) holds sample ids."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(logits, dtype=torch.float32))
        self.seen = []

    def forward(self, x):
        self.seen.append(x[:, 0].long().tolist())
        return self.table[x[:, 0].long()]


# -- clustering (sec. 5.2) -------------------------------------------------------------------


def test_covariance_matches_an_independent_computation():
    probs = confusable_predictions([(0, 1), (2, 3)], n_per_class=5)
    mean = probs.double().mean(0)
    expected = sum(torch.outer(p.double() - mean, p.double() - mean) for p in probs) / (
        len(probs) - 1)
    torch.testing.assert_close(prediction_covariance(probs), expected)


def test_clustering_the_covariance_columns_finds_the_confusable_pairs():
    pairs = [(0, 3), (1, 5), (2, 4)]
    probs = confusable_predictions(pairs)
    for seed in (0, 1, 2):
        assert cluster_classes(probs, 3, seed=seed) == [[0, 3], [1, 5], [2, 4]]
    # two subsets of three classes: each keeps its pairs together
    clusters = cluster_classes(probs, 2, seed=0, min_size=2)
    for a, b in pairs:
        assert any(a in c and b in c for c in clusters), clusters


def test_kmeans_is_deterministic_for_a_seed():
    points = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kmeans(points, 3, seed=4), kmeans(points, 3, seed=4))


def test_subsets_of_one_class_are_filled_from_the_nearest_large_cluster():
    points = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [10.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # cluster 2 holds one class
    fixed = enforce_min_size(points, labels, 3, min_size=2)
    assert torch.bincount(fixed, minlength=3).min() >= 2
    # only cluster 0 can spare a class; its nearest to cluster 2's centre (10.0) is 0.2
    assert fixed.tolist() == [0, 0, 2, 1, 1, 2]
    with pytest.raises(ConfigError, match="cannot make"):
        enforce_min_size(points, labels, 4, min_size=2)


# -- the combination (sec. 5.3) ---------------------------------------------------------------


def test_mapped_distribution_sums_the_dustbin():
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mapped = mapped_log_q(q.log(), torch.tensor([2, 0])).exp()
    torch.testing.assert_close(mapped, torch.tensor([[0.3, 0.1, 0.6]]))


def test_closed_form_gradient_is_the_gradient_of_the_objective():
    torch.manual_seed(0)
    k, members = 6, [torch.tensor([0, 1, 2]), torch.tensor([3, 4])]
    log_pg = F.log_softmax(torch.randn(3, k) * 2, -1)
    logp = [F.log_softmax(torch.randn(3, len(m) + 1) * 2, -1) for m in members]
    active = torch.tensor([[True, False], [True, True], [False, True]])
    z = torch.randn(3, k, dtype=torch.float64, requires_grad=True)
    terms = 1.0 + active.double().sum(1, keepdim=True)
    (combination_objective(F.log_softmax(z, -1), log_pg.double(), [p.double() for p in logp],
                           members, active) / terms.squeeze(1)).sum().backward()
    targets, dustbin = log_pg.exp().double(), torch.zeros(3, 2, dtype=torch.float64)
    rest = torch.ones(2, k, dtype=torch.float64)
    for m, member in enumerate(members):
        p = logp[m].exp().double() * active[:, m:m + 1]
        targets[:, member] += p[:, :-1]
        dustbin[:, m] = p[:, -1]
        rest[m, member] = 0.0
    torch.testing.assert_close(combination_gradient(z.detach(), targets, dustbin, rest, terms),
                               z.grad)


def test_without_an_active_specialist_q_is_the_generalist():
    log_pg = F.log_softmax(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), -1)
    out = combine(log_pg, [torch.zeros(1, 3)], [torch.tensor([2, 3])],
                  torch.tensor([[False]]), steps=50)
    torch.testing.assert_close(out, log_pg)
    # through the teacher: the generalist's top class 0 is in no subset
    teacher = SpecialistEnsemble(Table(log_pg), [Table(torch.zeros(1, 3))], [[2, 3]],
                                 num_classes=4)
    torch.testing.assert_close(teacher(torch.zeros(1, 1)).logits, log_pg)
    assert teacher.specialists[0].model.seen == []  # an inactive specialist is not run


def test_a_confident_specialist_pulls_q_to_the_objective_minimum():
    p_g = torch.tensor([0.40, 0.35, 0.15, 0.05, 0.05])
    subset, p_m = [0, 1], torch.tensor([0.05, 0.90, 0.05])  # sure it is class 1
    log_q = combine(p_g.log().view(1, -1), [p_m.log().view(1, -1)], [torch.tensor(subset)],
                    torch.tensor([[True]]), steps=300)
    q = log_q.exp()[0].double()
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(q.argmax()) == 1 and q[1] > p_g[1]  # moved toward the specialist
    expected = em_minimum(p_g, [(subset, p_m)])
    torch.testing.assert_close(q, expected, atol=2e-4, rtol=0)
    best = objective_one(expected, p_g, [(subset, p_m)])
    assert objective_one(q, p_g, [(subset, p_m)]) == pytest.approx(best, abs=1e-6)
    assert objective_one(p_g, p_g, [(subset, p_m)]) > best + 0.1


def test_teacher_combines_each_sample_with_its_active_specialists():
    """Three samples, two specialists: the teacher's q matches the independent minimum per
    sample, with the specialists chosen by the generalist's top class."""
    g_logits = torch.log(torch.tensor([[0.50, 0.30, 0.10, 0.05, 0.05],    # top 0 -> spec 1
                                       [0.05, 0.10, 0.50, 0.30, 0.05],    # top 2 -> spec 2
                                       [0.25, 0.05, 0.05, 0.05, 0.60]]))  # top 4 -> none
    s1 = torch.log(torch.tensor([[0.2, 0.7, 0.1]] * 3))   # subset [0, 1] + dustbin
    s2 = torch.log(torch.tensor([[0.3, 0.5, 0.2]] * 3))   # subset [3, 2] + dustbin
    teacher = SpecialistEnsemble(Table(g_logits), [Table(s1), Table(s2)], [[0, 1], [3, 2]],
                                 num_classes=5, top_n=1, steps=400)
    q = teacher(torch.arange(3.0).view(3, 1)).logits.exp().double()
    assert teacher.specialists[0].model.seen == [[0]]  # run on the samples they serve only
    assert teacher.specialists[1].model.seen == [[1]]
    p_g = g_logits.exp()
    torch.testing.assert_close(q[0], em_minimum(p_g[0], [([0, 1], s1[0].exp())]), atol=3e-4,
                               rtol=0)
    torch.testing.assert_close(q[1], em_minimum(p_g[1], [([3, 2], s2[1].exp())]), atol=3e-4,
                               rtol=0)
    torch.testing.assert_close(q[2], p_g[2].double(), atol=1e-6, rtol=0)
    # top_n = 2: sample 2's second class (0) activates specialist 1
    wide = SpecialistEnsemble(Table(g_logits), [Table(s1), Table(s2)], [[0, 1], [3, 2]],
                              num_classes=5, top_n=2)
    assert wide.active(F.log_softmax(g_logits, -1)).tolist() == [
        [True, False], [False, True], [True, False]]


def test_dustbin_correction_is_the_log_undersampling_factor():
    targets = torch.tensor([0] * 10 + [1] * 10 + [2] * 25 + [3] * 15)
    assert dustbin_shifts(targets, [[0, 1]], 1.0) == pytest.approx([math.log(40 / 20)])
    assert dustbin_shifts(targets, [[0, 1]], None) == [0.0]
    assert dustbin_shifts(targets, [[0, 1]], 5.0) == [0.0]  # every rest sample was kept
    p_g = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    s_logits = torch.tensor([[1.0, 0.0, 0.0]])
    teacher = SpecialistEnsemble(Table(p_g.log()), [Table(s_logits)], [[0, 1]],
                                 num_classes=4, steps=400, dustbin_shifts=[math.log(2.0)])
    q = teacher(torch.zeros(1, 1)).logits.exp()[0].double()
    shifted = F.softmax(s_logits[0] + torch.tensor([0.0, 0.0, math.log(2.0)]), -1)
    torch.testing.assert_close(q, em_minimum(p_g[0], [([0, 1], shifted)]), atol=3e-4, rtol=0)
    unshifted = em_minimum(p_g[0], [([0, 1], F.softmax(s_logits[0], -1))])
    assert float((q - unshifted).abs().max()) > 0.01


def test_the_teacher_refuses_bad_subsets_and_feature_requests():
    g = Table([[0.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match="distinct classes"):
        SpecialistEnsemble(g, [g], [[0, 5]], num_classes=3)
    with pytest.raises(ConfigError, match="top_n"):
        SpecialistEnsemble(g, [g], [[0, 1]], num_classes=3, top_n=4)
    with pytest.raises(ConfigError, match="probabilities only"):
        SpecialistEnsemble(g, [g], [[0, 1]], num_classes=3).require_features(["fc"])


# -- stages, end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generalist(tmp_path_factory):
    """A tiny generalist trained with api.train on 4 synthetic classes."""
    root = tmp_path_factory.mktemp("generalist")
    cfg = parse_config(synthetic_config(root, name="generalist", train={"epochs": 3}))
    return api.train(cfg, verbose=False).run_dir


def scheme_config(tmp_path, generalist, name="sp", scheme=None, **sections):
    section = {"name": "specialists", "num_specialists": 2, "specialist_epochs": 1,
               "steps": 30, **(scheme or {})}
    sections.setdefault("teacher", {"run": str(generalist)})
    sections.setdefault("losses", [{"name": "kd", "T": 2}])
    return synthetic_config(tmp_path, name=name, scheme=section, **sections)


def test_specialist_starts_from_the_generalist_with_its_rows(generalist, tmp_path):
    meta = read_model_description(generalist)
    write_specialist_init(str(generalist), meta, [3, 1], tmp_path / "init")
    spec, gen = load_run_model(tmp_path / "init"), load_run_model(generalist)
    x = torch.randn(5, *meta["input_shape"])
    with torch.no_grad():
        s, g = spec.eval()(x), gen.eval()(x)
    torch.testing.assert_close(s[:, :2], g[:, [3, 1]])  # special classes: the generalist's
    w = load_file(str(tmp_path / "init" / "model.safetensors"))
    src = load_file(str(generalist / "model.safetensors"))
    torch.testing.assert_close(w["fc.weight"][2], src["fc.weight"][[0, 2]].mean(0))
    torch.testing.assert_close(w["fc.bias"][2], src["fc.bias"][[0, 2]].mean() + math.log(2))
    for key in src:
        if not key.startswith("fc."):
            assert torch.equal(w[key], src[key]), key


def test_specialists_train_end_to_end(generalist, tmp_path):
    result = api.train(parse_config(scheme_config(tmp_path, generalist, train={"epochs": 1})),
                       verbose=False)
    records = {r["variant"]: r for r in result.summary["records"]}
    assert set(records) == {"student", "combined", "generalist", "specialist-1",
                            "specialist-2"}
    for r in records.values():
        assert 0.0 <= r["test_accuracy"] <= 100.0 and r["run_dir"]
        assert {"student", "student_options", "agreement", "train_seconds"} <= set(r)
    assert 0.0 <= records["combined"]["agreement"] <= 100.0  # with the generalist
    assert 0.0 <= records["student"]["agreement"] <= 100.0   # with the combined teacher
    root = tmp_path / "runs" / "sp"
    clusters = json.loads((root / "clusters.json").read_text())["clusters"]
    assert sorted(c for s in clusters for c in s) == [0, 1, 2, 3]
    # clustered on the generalist's predictions on the validation split
    data = api.build_data(parse_config(synthetic_config(tmp_path)))
    assert clusters == cluster_classes(generalist_probs(str(generalist), data.val), 2)
    for m, subset in enumerate(clusters):
        assert records[f"specialist-{m + 1}"]["classes"] == subset
        stage = yaml.safe_load((root / f"specialist-{m + 1}" / "config.yaml").read_text())
        assert stage["data"]["classes"] == subset and stage["data"]["rest"] == "merge"
        assert stage["data"]["rest_ratio"] == 1.0 and "teacher" not in stage
        assert stage["student"]["init"].endswith(f"init/specialist-{m + 1}")
        assert read_model_description(root / f"specialist-{m + 1}")["num_classes"] == 3
    final = yaml.safe_load((root / "student" / "config.yaml").read_text())
    assert final["scheme"]["clusters"] == clusters
    assert final["scheme"]["specialist_runs"] == [str(root / "specialist-1"),
                                                  str(root / "specialist-2")]
    params = sum(sum(p.numel() for p in load_run_model(d).parameters())
                 for d in [generalist, root / "specialist-1", root / "specialist-2"])
    assert api.load_run_summary(root / "student")["teacher_params"] == params


def test_interrupted_scheme_resumes_without_retraining_finished_stages(
        generalist, tmp_path, monkeypatch):
    def config(name):
        return parse_config(scheme_config(tmp_path, generalist, name=name,
                                          train={"epochs": 2}))

    full = api.train(config("full"), verbose=False)
    train, calls, interrupt = api.train, [], [True]

    class Interrupt(Exception):
        pass

    def stop_after_one(trainer, record):
        if record["epoch"] == 1:
            raise Interrupt

    def spy(cfg, **kwargs):
        calls.append((cfg.name, kwargs.get("resume", False)))
        if cfg.name == "student" and interrupt[0]:
            interrupt[0] = False
            kwargs["callbacks"] = [stop_after_one]
        return train(cfg, **kwargs)

    monkeypatch.setattr(api, "train", spy)
    with pytest.raises(Interrupt):
        train(config("cut"), verbose=False)
    root = tmp_path / "runs" / "cut"
    assert [c[0] for c in calls] == ["specialist-1", "specialist-2", "student"]
    assert not (root / "student" / "summary.json").exists()
    stamps = {m: (root / f"specialist-{m}" / "model.safetensors").stat().st_mtime_ns
              for m in (1, 2)}
    calls.clear()
    resumed = train(config("cut"), verbose=False)
    assert calls == [("student", True)]  # finished specialists read back, the student resumed
    assert stamps == {m: (root / f"specialist-{m}" / "model.safetensors").stat().st_mtime_ns
                      for m in (1, 2)}
    a = load_checkpoint(full.run_dir / "student" / "checkpoint.safetensors")["modules"]
    b = load_checkpoint(root / "student" / "checkpoint.safetensors")["modules"]
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key
    strip = [{k: v for k, v in r.items() if k not in ("run_dir", "train_seconds")}
             for r in full.summary["records"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("run_dir", "train_seconds")}
                     for r in resumed.summary["records"]]


@pytest.mark.parametrize("scheme,sections,message", [
    ({}, {"teacher": None}, "teacher: {run"),
    ({"num_specialists": 0}, {}, "num_specialists"),
    ({"num_specialists": 3}, {}, "at most 2"),
    ({"top_n": 5}, {}, "top_n is 5"),
    ({"clusters": [[0, 1]]}, {}, "make them agree"),
    ({"clusters": [[0, 1], [2, 7]]}, {}, "distinct classes"),
    ({"specialist_runs": ["x"]}, {}, "needs scheme.clusters"),
    ({}, {"losses": [{"name": "ce"}]}, "distillation term"),
    ({"specialist": {"name": "mlp", "hidden": [4]}}, {}, "specialist_init"),
    ({"cluster_split": "val"}, {"data": {"val_fraction": 0.0}}, "cluster_split"),
    ({"temperature": 2}, {}, "temperature"),
])
def test_bad_configs_are_refused_before_training(generalist, tmp_path, scheme, sections,
                                                 message):
    teacher = sections.pop("teacher", {"run": str(generalist)})
    data = scheme_config(tmp_path, generalist, scheme=scheme, **sections)
    if teacher is None:
        data.pop("teacher")
    with pytest.raises(ConfigError, match=message.replace("{", r"\{")):
        api.train(parse_config(data), verbose=False)
    assert not list((tmp_path / "runs").glob("sp/specialist-*"))
