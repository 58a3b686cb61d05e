"""The four teaching settings: what each side sees, and exact replay of what was drawn."""

import pytest
import torch

from kdforge import Batch, ConfigError
from kdforge.data.views import VIEWS, build_view


def images(b=6):
    torch.manual_seed(0)
    return Batch(torch.rand(b, 1, 8, 8), torch.arange(b) % 3, index=torch.arange(b))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_the_four_settings_are_registered():
    assert {"fixed", "independent", "consistent", "function_matching"} <= set(VIEWS.names())


def test_consistent_views_give_the_teacher_the_students_input():
    view = build_view("consistent", (1, 8, 8))
    batch = images()
    out = view(batch, gen(1))
    assert out.teacher_inputs is None  # the distiller then feeds batch.inputs to both
    assert not torch.equal(out.inputs, batch.inputs)
    assert torch.equal(view.augment.apply(batch.inputs, out.view.student), out.inputs)
    assert torch.equal(out.targets, batch.targets) and torch.equal(out.index, batch.index)


def test_fixed_view_teacher_input_never_changes():
    view = build_view("fixed", (1, 8, 8))
    batch = images()
    a, b = view(batch, gen(1)), view(batch, gen(2))
    assert torch.equal(a.teacher_inputs, batch.inputs) and torch.equal(b.teacher_inputs, batch.inputs)
    assert not torch.equal(a.inputs, b.inputs)  # the student's view is random


def test_independent_views_differ_and_replay():
    view = build_view("independent", (1, 8, 8))
    batch = images()
    out = view(batch, gen(3))
    assert not torch.equal(out.inputs, out.teacher_inputs)
    assert torch.equal(view.augment.apply(batch.inputs, out.view.student), out.inputs)
    assert torch.equal(view.augment.apply(batch.inputs, out.view.teacher), out.teacher_inputs)


def test_function_matching_mixes_consistently_without_labels():
    view = build_view("function_matching", (1, 8, 8), num_classes=3)
    batch = images()
    out = view(batch, gen(4))
    assert out.teacher_inputs is None and out.targets is None
    mix = out.view.mix
    assert (mix.ratio >= 0.5).all() and torch.equal(mix.partner, torch.arange(6).roll(1))
    replayed = view.mixup.apply(view.augment.apply(batch.inputs, out.view.student), mix)
    assert torch.equal(replayed, out.inputs)


def test_function_matching_with_labels_gives_mixed_targets():
    view = build_view("function_matching", (1, 8, 8), num_classes=3, labels=True)
    out = view(images(), gen(5))
    assert out.targets.shape == (6, 3)
    assert torch.allclose(out.targets.sum(-1), torch.ones(6))
    assert (out.targets.max(-1).values >= 0.5 - 1e-6).all()


def test_signals_get_the_1d_augmentation():
    view = build_view("consistent", (1, 40), noise_std=0.1)
    batch = Batch(torch.randn(4, 1, 40), torch.zeros(4, dtype=torch.long))
    out = view(batch, gen(6))
    assert out.inputs.shape == (4, 1, 40)
    assert torch.equal(view.augment.apply(batch.inputs, out.view.student), out.inputs)


def test_view_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown view 'consistant'.*'consistent'"):
        build_view("consistant", (1, 8, 8))
    with pytest.raises(ConfigError, match="scael"):
        build_view("consistent", (1, 8, 8), scael=(0.1, 1))
    with pytest.raises(ConfigError):
        build_view("consistent", (8,))
