"""DKD, DIST and logit-standardised KD against their formulas, recomputed with explicit sums."""

import math

import pytest
import torch

from kdforge import Batch, ConfigError, Distiller, Outputs, ShapeMismatchError, build_loss
from kdforge.losses import CE, DIST, DKD, KD
from tests.conftest import TinyNet

S = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4], [1.0, -2.0, 0.5, 0.0]])
T = torch.tensor([[1.5, 1.0, -0.5, 0.2], [-1.0, 0.0, 2.0, 0.7], [0.3, 0.1, -0.2, 1.1]])
Y = torch.tensor([0, 2, 3])


def softmax_list(row, temp=1.0):
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    return [v / sum(e) for v in e]


def kl_list(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def hand_tckd_nckd(s_row, t_row, y, temp):
    p_s, p_t = softmax_list(s_row, temp), softmax_list(t_row, temp)
    b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
    hat_s = [p_s[k] / (1 - p_s[y]) for k in range(len(p_s)) if k != y]
    hat_t = [p_t[k] / (1 - p_t[y]) for k in range(len(p_t)) if k != y]
    return temp**2 * kl_list(b_t, b_s), temp**2 * kl_list(hat_t, hat_s)


def hand_kd(s_row, t_row, temp):
    return temp**2 * kl_list(softmax_list(t_row, temp), softmax_list(s_row, temp))


# -- DKD -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_parts_match_hand_computed_tckd_and_nckd(temp):
    batch = Batch(S, Y)
    tckd, nckd = DKD(T=temp).parts(Outputs(S), Outputs(T), batch)
    for b in range(3):
        want_t, want_n = hand_tckd_nckd(S[b].tolist(), T[b].tolist(), int(Y[b]), temp)
        assert tckd[b].item() == pytest.approx(want_t, rel=1e-4, abs=1e-7)
        assert nckd[b].item() == pytest.approx(want_n, rel=1e-4, abs=1e-7)
    # the loss: batch mean of alpha * TCKD + beta * NCKD
    parts = [hand_tckd_nckd(S[b].tolist(), T[b].tolist(), int(Y[b]), temp) for b in range(3)]
    for alpha, beta in [(1.0, 0.0), (0.0, 1.0), (1.0, 8.0), (0.5, 2.0)]:
        want = sum(alpha * t + beta * n for t, n in parts) / 3
        got = DKD(alpha=alpha, beta=beta, T=temp)(Outputs(S), Outputs(T), batch)
        assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_equals_tckd_plus_teacher_weighted_nckd(temp):
    """The paper's eq. 5: KD = TCKD + (1 - p_t[y]) * NCKD, sample by sample."""
    batch = Batch(S, Y)
    tckd, nckd = DKD(T=temp).parts(Outputs(S), Outputs(T), batch)
    p_t_target = torch.softmax(T / temp, -1).gather(1, Y[:, None]).squeeze(1)
    per_sample = tckd + (1 - p_t_target) * nckd
    for b in range(3):
        assert per_sample[b].item() == pytest.approx(hand_kd(S[b].tolist(), T[b].tolist(), temp),
                                                     rel=1e-4)
    kd = KD(T=temp)(Outputs(S), Outputs(T), batch)
    assert per_sample.mean().item() == pytest.approx(kd.item(), rel=1e-5)
    # one sample at a time: DKD(alpha=1, beta=1 - p_t[y]) is exactly classic KD
    for b in range(3):
        one = slice(b, b + 1)
        dkd = DKD(alpha=1.0, beta=1 - p_t_target[b].item(), T=temp)
        got = dkd(Outputs(S[one]), Outputs(T[one]), Batch(S[one], Y[one]))
        want = KD(T=temp)(Outputs(S[one]), Outputs(T[one]), Batch(S[one]))
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_dkd_zero_for_identical_logits_and_gradient_reaches_student():
    batch = Batch(S, Y)
    assert DKD()(Outputs(T), Outputs(T.clone()), batch).item() == pytest.approx(0, abs=1e-6)
    s = S.clone().requires_grad_(True)
    loss = DKD()(Outputs(s), Outputs(T), batch)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_dkd_is_finite_for_a_saturated_teacher():
    # p_t[y] == 1 in float32: log(1 - p_t[y]) would be -inf; DKD works from log-sum-exps
    t = torch.tensor([[200.0, 0.0, -1.0, 0.5]])
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = DKD()(Outputs(s), Outputs(t), Batch(s, torch.tensor([0])))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_needs_class_index_labels():
    with pytest.raises(ConfigError, match="needs labels"):
        DKD()(Outputs(S), Outputs(T), Batch(S))
    soft = torch.softmax(T, -1)
    with pytest.raises(ConfigError, match="class-index labels.*soft or mixed"):
        DKD()(Outputs(S), Outputs(T), Batch(S, soft))
    with pytest.raises(ConfigError, match="needs labels"):
        DKD().setup(Outputs(S), Outputs(T), Batch(S))
    with pytest.raises(ShapeMismatchError, match="outside"):
        DKD().setup(Outputs(S), Outputs(T), Batch(S, torch.tensor([0, 1, 9])))
    with pytest.raises(ShapeMismatchError) as err:
        DKD().setup(Outputs(torch.zeros(3, 4)), Outputs(torch.zeros(3, 7)), Batch(S, Y))
    assert "(3, 4)" in str(err.value) and "(3, 7)" in str(err.value)


def test_dkd_options_and_warmup_schedule():
    term = build_loss("dkd", alpha=1, beta=8, T=4, weight=1, warmup_epochs=20)
    assert (term.alpha, term.beta, term.T) == (1.0, 8.0, 4.0)
    assert term.weight_at(0) == 0 and term.weight_at(10) == pytest.approx(0.5)
    assert term.weight_at(25) == 1
    with pytest.raises(ConfigError, match="has no option 'temperature'"):
        build_loss("dkd", temperature=4)
    with pytest.raises(ConfigError, match="T must be > 0"):
        DKD(T=0)
    with pytest.raises(ConfigError, match="alpha and beta"):
        DKD(beta=-1)


def test_dkd_standardized_ignores_affine_student_logits():
    batch = Batch(S, Y)
    a = torch.tensor([[2.0], [0.5], [3.0]])
    b = torch.tensor([[1.0], [-4.0], [0.2]])
    term = DKD(standardize=True, T=2)
    base = term(Outputs(S), Outputs(T), batch)
    assert term(Outputs(a * S + b), Outputs(T), batch).item() == pytest.approx(base.item(),
                                                                                rel=1e-4)
    assert term(Outputs(a * T + b), Outputs(T), batch).item() == pytest.approx(0, abs=1e-5)


# -- DIST ----------------------------------------------------------------------------------------

def pearson_list(x, y, eps=1e-8):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cx, cy = [v - mx for v in x], [v - my for v in y]
    num = sum(a * b for a, b in zip(cx, cy, strict=True))
    den = math.sqrt(sum(a * a for a in cx)) * math.sqrt(sum(b * b for b in cy)) + eps
    return num / den


@pytest.mark.parametrize(("beta", "gamma", "temp"), [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0),
                                                     (1.0, 0.0, 2.0)])
def test_dist_matches_hand_computed_pearson_relations(beta, gamma, temp):
    ys = [softmax_list(S[b].tolist(), temp) for b in range(3)]
    yt = [softmax_list(T[b].tolist(), temp) for b in range(3)]
    inter = 1 - sum(pearson_list(ys[b], yt[b]) for b in range(3)) / 3
    cols_s = [[ys[b][k] for b in range(3)] for k in range(4)]
    cols_t = [[yt[b][k] for b in range(3)] for k in range(4)]
    intra = 1 - sum(pearson_list(cols_s[k], cols_t[k]) for k in range(4)) / 4
    want = temp**2 * (beta * inter + gamma * intra)
    got = DIST(beta=beta, gamma=gamma, T=temp)(Outputs(S), Outputs(T), Batch(S))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_dist_zero_for_identical_logits_and_gradient_reaches_student():
    # exactly 0 up to the eps = 1e-8 in the correlation's denominator
    assert DIST()(Outputs(T), Outputs(T.clone()), Batch(T)).item() == pytest.approx(0, abs=1e-5)
    assert DIST(T=4)(Outputs(T), Outputs(T.clone()), Batch(T)).item() == pytest.approx(0, abs=1e-3)
    s = S.clone().requires_grad_(True)
    loss = DIST()(Outputs(s), Outputs(T), Batch(s))
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_dist_errors_and_options():
    with pytest.raises(ShapeMismatchError, match="batch of at least 2"):
        DIST().setup(Outputs(S[:1]), Outputs(T[:1]), Batch(S[:1]))
    DIST(gamma=0).setup(Outputs(S[:1]), Outputs(T[:1]), Batch(S[:1]))  # inter alone is fine
    with pytest.raises(ShapeMismatchError, match="num_classes=7"):
        DIST().setup(Outputs(torch.zeros(3, 4)), Outputs(torch.zeros(3, 7)), Batch(S))
    with pytest.raises(ConfigError, match="has no option 'tau'.*T"):
        build_loss("dist", tau=4)
    term = build_loss("dist", beta=2, gamma=2, T=4)
    assert (term.beta, term.gamma, term.T) == (2.0, 2.0, 4.0)
    with pytest.raises(ConfigError, match="T must be > 0"):
        DIST(T=-1)


# -- logit standardisation -----------------------------------------------------------------------

def zscore_list(row):
    k = len(row)
    mean = sum(row) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))  # Bessel-corrected
    return [(v - mean) / (std + 1e-7) for v in row]


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_standardized_kd_matches_formula(temp):
    want = sum(hand_kd(zscore_list(S[b].tolist()), zscore_list(T[b].tolist()), temp)
               for b in range(3)) / 3
    got = KD(T=temp, standardize=True)(Outputs(S), Outputs(T), Batch(S))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_standardized_kd_is_invariant_to_per_sample_affine_student_logits():
    a = torch.tensor([[2.0], [0.5], [3.0]])
    b = torch.tensor([[1.0], [-4.0], [0.2]])
    term = KD(T=2, standardize=True)
    base = term(Outputs(S), Outputs(T), Batch(S)).item()
    assert term(Outputs(a * S + b), Outputs(T), Batch(S)).item() == pytest.approx(base, rel=1e-4)
    assert term(Outputs(a * T + b), Outputs(T), Batch(S)).item() == pytest.approx(0, abs=1e-5)
    # without standardisation the scale matters
    assert KD(T=2)(Outputs(a * T + b), Outputs(T), Batch(S)).item() > 1e-2
    s = S.clone().requires_grad_(True)
    term(Outputs(s), Outputs(T), Batch(s)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_standardize_option_through_build_loss():
    term = build_loss("kd", T=2, standardize=True, weight=9)
    assert term.standardize and term.T == 2 and "standardize=True" in repr(term)
    assert not KD().standardize


# -- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("term", [DKD(), DIST(T=4), KD(T=2, standardize=True),
                                  DKD(standardize=True)], ids=["dkd", "dist", "kd_ls", "dkd_ls"])
def test_response_terms_train_a_student_end_to_end(term):
    torch.manual_seed(0)
    distiller = Distiller(TinyNet(width=4), TinyNet(width=8), [CE(), term])
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    out = distiller(x, y)
    assert torch.isfinite(out.loss) and term.name in out.parts
    out.loss.backward()
    assert distiller.student.fc.weight.grad.abs().sum() > 0
