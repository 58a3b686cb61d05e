import math

import pytest
import torch

from kdforge.core.outputs import Outputs
from kdforge.engine.metrics import Evaluator, evaluate, measure_latency
from kdforge.teachers.base import Teacher


def test_fidelity_metrics_match_hand_computation():
    s = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0],
                      [0.0, 2.0, 1.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    t = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 3.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]])
    y = torch.tensor([0, 2, 1])
    ev = Evaluator(6, with_teacher=True, device=torch.device("cpu"))
    ev.update(s[:2], y[:2], t[:2])
    ev.update(s[2:], y[2:], t[2:])
    m = ev.compute()
    assert m["accuracy"] == pytest.approx(1 / 3)          # only sample 0 is right
    assert m["agreement"] == pytest.approx(2 / 3)         # samples 0 and 2 agree
    # sample 1: teacher top-1 (class 2) is the student's 2nd choice, so within top-5
    assert m["agreement_top5"] == pytest.approx(1.0)
    p_t, log_p_s = torch.softmax(t, -1), torch.log_softmax(s, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert m["kl"] == pytest.approx(kl.item(), rel=1e-5)
    nll = torch.nn.functional.cross_entropy(s, y)
    assert m["nll"] == pytest.approx(nll.item(), rel=1e-5)


def test_ece_of_hand_made_predictions():
    # two samples, confidence 0.9 (right) and 0.6 (wrong), fall in different bins:
    # ECE = 1/2 * |0.9 - 1| + 1/2 * |0.6 - 0| = 0.35
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    ev = Evaluator(2, with_teacher=False, device=torch.device("cpu"))
    ev.update(probs.log(), torch.tensor([0, 1]), None)
    assert ev.compute()["ece"] == pytest.approx(0.35, abs=1e-6)


def test_evaluate_restores_mode_and_calls_teacher_with_batch():
    class Echo(Teacher):
        def forward(self, inputs, batch=None):
            return Outputs(inputs * 2)

    student = torch.nn.Linear(3, 3)
    student.train()
    x = torch.randn(8, 3)
    loader = [{"input": x, "target": torch.zeros(8, dtype=torch.long)}]
    m = evaluate(student, loader, num_classes=3, teacher=Echo())
    assert student.training
    expected = (student(x).argmax(-1) == (2 * x).argmax(-1)).float().mean().item()
    assert m["agreement"] == pytest.approx(expected)


def test_measure_latency_is_positive_and_restores_mode():
    net = torch.nn.Linear(4, 2)
    ms = measure_latency(net, torch.zeros(8, 4), warmup=1, repeats=3)
    assert ms > 0 and math.isfinite(ms) and net.training
