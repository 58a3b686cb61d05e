"""Response terms against their formulas, computed independently with explicit sums."""

import math

import pytest
import torch

from kdforge import CE, KD, Batch, ConfigError, Outputs, ShapeMismatchError, SoftCE, build_loss
from kdforge.losses.response import _SoftTargetKL, tempered_kl

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
T = torch.tensor([[1.5, 1.0, -0.5], [-1.0, 0.0, 2.0]])
Y = torch.tensor([0, 2])


def softmax_list(row, temp):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def test_ce_matches_hand_computed_value():
    expected = sum(-math.log(softmax_list(S[b].tolist(), 1)[Y[b]]) for b in range(2)) / 2
    got = CE()(Outputs(S), None, Batch(S, Y))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ce_label_smoothing_matches_formula():
    eps, k = 0.1, 3
    expected = 0.0
    for b in range(2):
        p = softmax_list(S[b].tolist(), 1)
        q = [eps / k + (1 - eps) * (j == int(Y[b])) for j in range(k)]
        expected += -sum(qj * math.log(pj) for qj, pj in zip(q, p, strict=True))
    got = CE(label_smoothing=eps)(Outputs(S), None, Batch(S, Y))
    assert got.item() == pytest.approx(expected / 2, rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_matches_hinton_formula(temp):
    expected = 0.0
    for b in range(2):
        p_t = softmax_list(T[b].tolist(), temp)
        p_s = softmax_list(S[b].tolist(), temp)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = temp**2 * expected / 2
    got = KD(T=temp)(Outputs(S), Outputs(T), Batch(S))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    assert KD()(Outputs(T), Outputs(T.clone()), Batch(T)).item() == pytest.approx(0, abs=1e-7)
    assert KD()(Outputs(S), Outputs(T), Batch(S)).item() > 0


def test_kd_is_not_mse_on_probabilities():
    # A shift of all logits changes no probability: KD must ignore it.
    assert KD()(Outputs(T + 5.0), Outputs(T), Batch(T)).item() == pytest.approx(0, abs=1e-6)


def test_kd_gradient_reaches_student_only():
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    KD()(Outputs(s), Outputs(t.detach()), Batch(s)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # gradient of T^2 KL wrt s = T * (softmax(s/T) - softmax(t/T)) / B
    temp = 4.0
    expected = temp * (torch.softmax(S / temp, -1) - torch.softmax(T / temp, -1)) / 2
    assert torch.allclose(s.grad, expected, atol=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_tempered_kl_paths_agree_in_value_and_student_gradient(temp):
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(16, 7, generator=gen) * 4
    t[0, 0] = 200.0  # a teacher certain enough that exp underflows to exactly 0
    s1 = (torch.randn(16, 7, generator=gen) * 2).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    fast = tempered_kl(s1, t, temp)  # frozen teacher: logsumexp form, own gradient
    exact = tempered_kl(s2, t.clone().requires_grad_(), temp)  # trained peer: kl_div
    assert torch.isfinite(fast) and fast.item() == pytest.approx(exact.item(), rel=1e-5)
    fast.backward()
    exact.backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)


def test_soft_target_kl_gradient_is_exact():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    log_q = torch.log_softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2, -1)
    assert torch.autograd.gradcheck(lambda x: _SoftTargetKL.apply(x, log_q.exp(), log_q), (z,))
    same = z.detach() - z.detach().logsumexp(-1, keepdim=True)  # as tempered_kl computes it
    assert _SoftTargetKL.apply(z.detach(), same.exp(), same).item() == 0.0  # KL(p || p) = 0


def test_kd_uses_teacher_probabilities_when_given():
    # a store's Outputs carry log-probabilities and their probabilities: same loss, same
    # gradient as from the log-probabilities alone
    log_q = torch.log_softmax(T * 2, -1)
    s1, s2 = S.clone().requires_grad_(), S.clone().requires_grad_()
    with_probs = KD(T=1)(Outputs(s1), Outputs(log_q, probs=log_q.exp()), Batch(s1))
    without = KD(T=1)(Outputs(s2), Outputs(log_q), Batch(s2))
    assert with_probs.item() == pytest.approx(without.item(), rel=1e-6)
    with_probs.backward()
    without.backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
    # at T != 1 the probabilities (a T = 1 quantity) are not used
    hot = KD(T=4)(Outputs(S), Outputs(log_q, probs=torch.zeros_like(log_q)), Batch(S))
    assert hot.item() == pytest.approx(KD(T=4)(Outputs(S), Outputs(log_q), Batch(S)).item())


def test_soft_ce_equals_kd_plus_teacher_entropy():
    temp = 2.0
    q = torch.softmax(T / temp, -1)
    entropy = -(q * q.log()).sum(-1).mean() * temp**2
    kd = KD(T=temp)(Outputs(S), Outputs(T), Batch(S))
    sce = SoftCE(T=temp)(Outputs(S), Outputs(T), Batch(S))
    assert sce.item() == pytest.approx((kd + entropy).item(), rel=1e-5)


def test_soft_ce_from_probability_targets():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    expected = sum(
        -sum(qj * math.log(pj) for qj, pj in zip(q[b].tolist(), softmax_list(S[b].tolist(), 1),
                                                  strict=True))
        for b in range(2)
    ) / 2
    term = SoftCE(source="targets")
    assert not term.needs_teacher
    term.setup(Outputs(S), None, Batch(S, q))
    assert term(Outputs(S), None, Batch(S, q)).item() == pytest.approx(expected, rel=1e-6)


def test_class_count_mismatch_names_both_shapes():
    with pytest.raises(ShapeMismatchError) as err:
        KD().setup(Outputs(torch.zeros(2, 10)), Outputs(torch.zeros(2, 100)), Batch(S))
    msg = str(err.value)
    assert "(2, 10)" in msg and "(2, 100)" in msg and "num_classes=100" in msg


def test_ce_label_out_of_range_is_explained():
    with pytest.raises(ShapeMismatchError, match="only 3 classes"):
        CE().setup(Outputs(S), None, Batch(S, torch.tensor([0, 7])))


def test_bad_hyper_parameters_and_options():
    with pytest.raises(ConfigError, match="T must be > 0"):
        KD(T=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        CE(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="has no option 'temperature'.*T"):
        build_loss("kd", temperature=3)
    with pytest.raises(ConfigError, match="unknown loss term 'kdd'"):
        build_loss("kdd")
    assert build_loss("kd", T=2, weight=0.5).T == 2
