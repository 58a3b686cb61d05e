"""AE-KD (Du et al. 2020): the min-norm weights and the loss against their definitions."""

import itertools
import math

import pytest
import torch

from kdforge import KD, Batch, ConfigError, Distiller, ModuleTeacher, Outputs, build_loss
from kdforge.losses.ensemble import AEKD, aekd_weights, min_norm_weights
from kdforge.teachers.ensemble import EnsembleOutputs, EnsembleTeacher
from tests.conftest import TinyNet

D = torch.float64


def gram_of(*vectors):
    g = torch.stack([torch.as_tensor(v, dtype=D) for v in vectors])
    return (g @ g.T).unsqueeze(0)


def two_vector_weight(g1, g2, C):
    """Sener & Koltun's two-task min-norm weight of g1, clipped to the bound [1 - C, C]."""
    g1, g2 = torch.as_tensor(g1, dtype=D), torch.as_tensor(g2, dtype=D)
    diff = g1 - g2
    a = float((g2 - g1) @ g2) / float(diff @ diff)
    return min(max(a, 1.0 - min(C, 1.0)), min(C, 1.0))


def norm2(alpha, gram):
    return float(alpha @ gram @ alpha)


def test_opposite_gradients_get_equal_weights():
    v = [1.0, -2.0, 0.5]
    w = min_norm_weights(gram_of(v, [-x for x in v]), C=1.0)[0]
    assert torch.allclose(w, torch.tensor([0.5, 0.5], dtype=D), atol=1e-12)


def test_opposite_gradients_of_other_norms_cancel():
    # a * v - (1 - a) * 2v = 0  ->  a = 2/3: the min-norm point is the origin
    v = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    w = min_norm_weights(gram_of(v, -2 * v), C=1.0)[0]
    assert w[0].item() == pytest.approx(2 / 3, abs=1e-12)


def test_dominated_gradient_goes_to_the_bound():
    v = [1.0, 2.0, -1.0]
    twice = [2 * x for x in v]  # the same direction, twice as long: all weight on the short one
    assert min_norm_weights(gram_of(v, twice), C=1.0)[0].tolist() == pytest.approx([1.0, 0.0])
    w = min_norm_weights(gram_of(v, twice), C=0.6)[0]
    assert w.tolist() == pytest.approx([0.6, 0.4], abs=1e-12)
    assert two_vector_weight(v, twice, 0.6) == pytest.approx(0.6)


@pytest.mark.parametrize("C", [1.0, 0.75, 0.55])
def test_two_gradients_match_the_closed_form(C):
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        g1, g2 = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
        w = min_norm_weights(gram_of(g1, g2), C=C, iterations=1)[0]
        assert w[0].item() == pytest.approx(two_vector_weight(g1, g2, C), abs=1e-10)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12)


def brute_force_min(gram, C, step=0.01):
    """The least ||sum a_m g_m||^2 on a grid of the capped simplex (three members)."""
    best, grid = math.inf, [i * step for i in range(int(round(min(C, 1.0) / step)) + 1)]
    for a0, a1 in itertools.product(grid, grid):
        a2 = 1.0 - a0 - a1
        if -1e-9 <= a2 <= C + 1e-9:
            best = min(best, norm2(torch.tensor([a0, a1, a2], dtype=D), gram))
    return best


@pytest.mark.parametrize("C", [1.0, 0.5, 0.4])
def test_weights_stay_on_the_capped_simplex_and_reach_the_minimum(C):
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(6, 3, 4, generator=g, dtype=D)
    grams = vectors @ vectors.transpose(1, 2)
    weights = min_norm_weights(grams, C=C, iterations=20)
    assert torch.all(weights >= -1e-12) and torch.all(weights <= C + 1e-12)
    assert torch.allclose(weights.sum(-1), torch.ones(6, dtype=D), atol=1e-12)
    for w, gram in zip(weights, grams, strict=True):
        assert norm2(w, gram) <= brute_force_min(gram, C) + 1e-9
    assert (weights > min(C, 1.0) - 1e-9).any() or C == 1.0  # the bound binds somewhere
    few = min_norm_weights(grams, C=C, iterations=1)  # any number of steps is feasible
    assert torch.all(few <= C + 1e-12) and torch.allclose(few.sum(-1), torch.ones(6, dtype=D))


def test_bound_below_one_over_m_is_refused():
    with pytest.raises(ConfigError, match="at least 1/3"):
        min_norm_weights(torch.eye(3, dtype=D)[None], C=0.3)
    assert min_norm_weights(torch.eye(3, dtype=D)[None], C=1 / 3)[0].tolist() == pytest.approx(
        [1 / 3] * 3)


# -- the loss -------------------------------------------------------------------------------

S = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
T1 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
T2 = torch.tensor([[0.0, 0.0, 3.0], [2.0, 0.0, 0.0]])


def softmax(row, T):
    e = [math.exp(x / T) for x in row]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def ensemble_out(*members):
    stacked = torch.stack(members)
    return EnsembleOutputs(stacked.mean(0), member_logits=stacked)


@pytest.mark.parametrize("C", [1.0, 0.6])
def test_loss_per_batch_from_its_formula(C):
    T = 2.0
    rows = range(S.shape[0])
    ps = [softmax(S[b].tolist(), T) for b in rows]
    qs = [[softmax(t[b].tolist(), T) for b in rows] for t in (T1, T2)]
    # per-teacher gradients w.r.t. all the batch's student logits: (p_s - p_m), flattened
    grads = [[ps[b][k] - q[b][k] for b in rows for k in range(3)] for q in qs]
    a = two_vector_weight(grads[0], grads[1], C)
    kls = [sum(kl(q[b], ps[b]) for b in rows) / len(rows) for q in qs]
    expected = T * T * (a * kls[0] + (1 - a) * kls[1])
    term = AEKD(T=T, C=C)
    out = term(Outputs(S), ensemble_out(T1, T2), Batch(S))
    assert out.item() == pytest.approx(expected, rel=1e-5)
    assert 0.6 < two_vector_weight(grads[0], grads[1], 1.0) < 0.7  # the bound 0.6 binds
    assert a == pytest.approx(min(C, 0.6409), abs=1e-3)


def test_loss_per_sample_from_its_formula():
    T, C = 1.0, 0.7
    expected = 0.0
    for b in range(S.shape[0]):
        p = softmax(S[b].tolist(), T)
        q1, q2 = softmax(T1[b].tolist(), T), softmax(T2[b].tolist(), T)
        a = two_vector_weight([x - y for x, y in zip(p, q1, strict=True)],
                              [x - y for x, y in zip(p, q2, strict=True)], C)
        expected += a * kl(q1, p) + (1 - a) * kl(q2, p)
    expected *= T * T / S.shape[0]
    out = AEKD(T=T, C=C, per="sample")(Outputs(S), ensemble_out(T1, T2), Batch(S))
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_weights_are_held_constant_in_the_gradient():
    T = 3.0
    s = S.clone().requires_grad_(True)
    term = AEKD(T=T, C=1.0)
    term(Outputs(s), ensemble_out(T1, T2), Batch(s)).backward()
    alpha = aekd_weights(S, torch.stack([T1, T2]), T=T, C=1.0)[0]
    p_s = torch.softmax(S / T, -1)
    closed = sum(a * T / S.shape[0] * (p_s - torch.softmax(t / T, -1))
                 for a, t in zip(alpha, (T1, T2), strict=True))
    assert torch.allclose(s.grad, closed, atol=1e-6)


def test_gradient_reaches_the_student_and_not_the_teachers():
    torch.manual_seed(0)
    teachers = [TinyNet(), TinyNet()]
    student = TinyNet()
    distiller = Distiller(student, EnsembleTeacher(teachers), [AEKD(T=4, C=0.6)])
    x = torch.randn(8, 1, 8, 8)
    distiller(x, torch.randint(0, 4, (8,))).loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert sum(float(p.grad.abs().sum()) for p in student.parameters()) > 0
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_two_identical_teachers_give_plain_kd():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    plain = KD(T=4)(Outputs(s), Outputs(t), Batch(s))
    for per in ("batch", "sample"):
        value = AEKD(T=4, C=0.6, per=per)(Outputs(s), ensemble_out(t, t), Batch(s))
        assert value.item() == pytest.approx(plain.item(), rel=1e-5)
    weights = aekd_weights(s, torch.stack([t, t]), T=4, C=0.6)
    assert weights[0].tolist() == pytest.approx([0.5, 0.5])


def test_registered_and_refuses_a_single_teacher():
    term = build_loss("aekd", weight=0.9, T=4, C=0.6)
    assert isinstance(term, AEKD) and term.weight == 0.9
    with pytest.raises(ConfigError, match="list of two or more trained teachers"):
        term.setup(Outputs(S), Outputs(T1), Batch(S))  # a single teacher's outputs
    distiller = Distiller(TinyNet(), ModuleTeacher(TinyNet()), [AEKD()])
    with pytest.raises(ConfigError, match="single network"):
        distiller.prepare(Batch(torch.randn(2, 1, 8, 8)))
    with pytest.raises(ConfigError, match="at least 1/2"):
        AEKD(C=0.4).setup(Outputs(S), ensemble_out(T1, T2), Batch(S))
    with pytest.raises(ConfigError, match="per must be one of"):
        AEKD(per="epoch")
    with pytest.raises(ConfigError, match="C bounds"):
        AEKD(C=0.0)


def test_ensemble_exposes_member_logits_and_named_member_features():
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet(num_classes=4, width=6)
    ens = EnsembleTeacher([a, b], names=["small", "big"])
    ens.require_features(["big:conv", "0:conv"])
    x = torch.randn(3, 1, 8, 8)
    out = ens(x)
    assert out.member_logits.shape == (2, 3, 4)
    assert torch.allclose(out.member_logits[1], b(x))
    assert set(out.features) == {"big:conv", "1:conv", "0:conv"}  # named: under both keys
    assert out.features["big:conv"] is out.features["1:conv"]
    assert out.features["big:conv"].shape == (3, 6, 8, 8)  # member 'big', not member 0
    assert out.features["0:conv"].shape == (3, 4, 8, 8)
    assert out.detach().member_logits is not None
    with pytest.raises(ConfigError, match="no member 'huge'.*small, big"):
        ens.require_features(["huge:conv"])
    with pytest.raises(ConfigError, match="'i:layer'"):
        ens.require_features(["conv"])
    with pytest.raises(ConfigError, match="distinct words"):
        EnsembleTeacher([a, b], names=["x", "x"])
    with pytest.raises(ConfigError, match="distinct words"):
        EnsembleTeacher([a, b], names=["0", "y"])
